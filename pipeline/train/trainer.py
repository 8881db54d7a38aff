"""The state of one training run around a pipeline.train.learner.Learner (pipeline.train.fit.fit drives it).

Owns the split's data, evaluation, logs and checkpoints. A checkpoint holds everything for an exact
resume; a run resumes from one when it belongs to the same configuration and starts afresh (saying
so) when it does not. Where the run stands is the loop's `Progress`, handed to each method.
"""

from __future__ import annotations

import math
from datetime import datetime
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from ddfp.methods import reported_model
from ddfp.step import Batch, Phase
from pipeline.files import write_json_atomic
from pipeline.params import Config, stored_config
from pipeline.secrets import redact_tree
from pipeline.tracking.tracker import Tracker
from pipeline.train import checkpoint, distributed
from pipeline.train.code_version import code_digest
from pipeline.train.console import PROGRESS, PlainProgress, Rate
from pipeline.train.distributed import SINGLE, DistEnv
from pipeline.train.learner import Learner, StepResult
from pipeline.train.loaders import TrainLoaders, global_batch_line, read_split_file, train_loaders, val_loader
from pipeline.train.validation import StopCheck, evaluate_models


class StopFlag(Protocol):
    """Set from outside (a signal handler's threading.Event): stop at the next iteration boundary."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class RunPaths:
    data_root: Path
    split_dir: Path
    out_dir: Path
    weights: Path | None = None

    @property
    def ckpt(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def log(self) -> Path:
        return self.out_dir / "train_log.json"  # one row per logged iteration (DVC plot)

    @property
    def val_log(self) -> Path:
        return self.out_dir / "val_log.json"  # one row per evaluation (DVC plot)


def fingerprint(cfg: Config) -> dict[str, Any]:
    """What must match for a checkpoint to resume: the values that train the weights, except
    train.max_iters, which only says where a run stops (a longer run continues a shorter one)."""
    return {k: v for k, v in cfg.training_values().items() if k != "train.max_iters"}


def not_resumable(state: dict[str, Any], cfg: Config) -> str | None:
    """Why a loaded checkpoint cannot continue cfg's run (None: it can)."""
    if fingerprint(stored_config(state["config"])) != fingerprint(cfg):
        return "checkpoint of another configuration"
    if state.get("code") != code_digest():  # e.g. `dvc repro` after an edit of ddfp/
        return "checkpoint of other training code"
    return None


@dataclass
class Progress:
    """Where a run is: the loop advances it, the checkpoint saves it, a resume restores it."""

    epoch: int = 0  # epochs completed
    iter_in_epoch: int = 0  # iterations done in the current epoch
    iteration: int = 0  # iterations done in all
    skipped: dict[str, int] = field(default_factory=lambda: {"seg": 0, "flow": 0})  # non-finite updates

    def advance(self, step: StepResult) -> None:
        self.iter_in_epoch += 1
        self.iteration += 1
        self.skipped["seg"] += int(step.seg_skipped)
        self.skipped["flow"] += int(step.flow_skipped)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.iter_in_epoch = 0

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        return cls(**{f.name: state[f.name] for f in fields(cls)})


def evaluation_due(cfg: Config, p: Progress, evals: list[dict[str, Any]]) -> bool:
    """Whether the epoch just completed is one to evaluate and has no evaluation yet (a stop request
    during it, or a resume from the checkpoint saved then, leaves it to do)."""
    epochs, every = cfg.train.epochs, cfg.run.eval_every
    at_end = p.epoch > 0 and p.iter_in_epoch == 0 and (p.epoch % every == 0 or p.epoch == epochs)
    return at_end and not any(row["epoch"] == p.epoch for row in evals)


class Trainer:
    """One training run: a Learner on the split's data, its evaluation, logs and checkpoint; `fit`
    drives it with the run's Progress."""

    def __init__(self, cfg: Config, paths: RunPaths, tracker: Tracker, device: torch.device,
                 dist: DistEnv = SINGLE) -> None:
        self.cfg, self.paths, self.tracker, self.device, self.dist = cfg, paths, tracker, device, dist
        # The loaders draw nothing from the global RNG, so the models' initialisation stays seeded.
        self.loaders: TrainLoaders = train_loaders(cfg, paths.data_root, paths.split_dir, dist.rank, dist.world_size)
        self.val = val_loader(cfg, paths.data_root, paths.split_dir, dist.rank, dist.world_size)
        self.val_lines = len(read_split_file(paths.split_dir / "val.txt"))  # over all ranks
        self.iters_per_epoch = self.loaders.iters_per_epoch
        if cfg.train.global_batch is not None and dist.is_main:  # how the reference batch is kept, at the start
            tqdm.write(global_batch_line(cfg, dist.world_size))
        self.learner = Learner(cfg, device, self.iters_per_epoch, dist, paths.weights)
        self.total_iters = self.learner.total_iters
        self.max_iters = min(self.total_iters, cfg.train.max_iters or math.inf)  # where this run stops
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.saved_done = False  # whether the checkpoint on disk is this run's finished state
        self.resumed_run_id: str | None = None  # the tracker run a resumed checkpoint belongs to

    # ---- checkpoints -------------------------------------------------------------------------
    def finished(self, progress: Progress) -> bool:
        """Reached where this run stops (the schedule's end or train.max_iters)."""
        return progress.iteration >= self.max_iters

    def complete(self, progress: Progress) -> bool:
        ended = self.finished(progress) or progress.epoch >= self.cfg.train.epochs
        return ended and not evaluation_due(self.cfg, progress, self.evals)

    def state_dict(self, progress: Progress) -> dict[str, Any]:
        return {
            "config": redact_tree(self.cfg.to_dict()),  # a DVC output and MLflow artifact
            "done": self.complete(progress),
            **{k: part.state_dict() for k, part in self.learner.parts().items()}, "rng": checkpoint.rng_state(),
            **asdict(progress), "history": self.history, "evals": self.evals,
            "run_id": self.tracker.run_id or self.resumed_run_id, "code": code_digest(),
        }

    def save(self, progress: Progress) -> None:
        if self.dist.is_main:  # every rank holds the same state (averaged gradients); one writes it
            checkpoint.save_atomic(self.state_dict(progress), self.paths.ckpt)
            write_json_atomic(self.history, self.paths.log)
            write_json_atomic(self.evals, self.paths.val_log)
        self.saved_done = self.complete(progress)

    def try_resume(self) -> Progress:
        """Load the run's checkpoint (the previous one if it is damaged) if it is of this configuration;
        returns where the run stands (the start when nothing was loaded)."""
        state, source = checkpoint.load_resumable(self.paths.ckpt)
        if state is None:
            return Progress()
        refused = not_resumable(state, self.cfg)
        if refused:
            tqdm.write(f"{source}: {refused}, training from scratch")
            return Progress()
        for key, part in self.learner.parts().items():
            part.load_state_dict(state[key])
        checkpoint.set_rng_state(state["rng"])
        self.history, self.evals = state["history"], state["evals"]
        self.saved_done = bool(state["done"])
        self.resumed_run_id = state.get("run_id")
        progress = Progress.from_state(state)
        tqdm.write(f"resumed {source} at iteration {progress.iteration}")
        return progress

    # ---- data, logging and evaluation --------------------------------------------------------
    def to_batch(self, bl: dict, bu: dict) -> Batch:
        return Batch.from_samples(bl, bu, self.learner.images, lambda x: x.to(self.device, non_blocking=True))

    def log(self, logs: dict[str, torch.Tensor], progress: Progress, bar: tqdm | PlainProgress) -> None:
        row = {k: round(float(v), 6) for k, v in logs.items()}
        opt_seg, opt_flow = self.learner.opt_seg, self.learner.opt_flow
        row.update(iteration=progress.iteration, epoch=progress.epoch, lr=opt_seg.param_groups[0]["lr"],
                   flow_lr=opt_flow.param_groups[0]["lr"], skipped_seg=progress.skipped["seg"],
                   skipped_flow=progress.skipped["flow"])
        self.history.append(row)
        self.tracker.log_metrics({k: v for k, v in row.items() if k not in ("iteration", "epoch")}, progress.iteration)
        bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "flow_bpd", "confident_ratio") if k in row})

    def stop_check(self, stop: StopFlag | None) -> StopCheck | None:
        """The evaluation's stop check: every rank asks together (one tiny all_reduce) before each of
        the batches that every rank has; shards differ by at most one image, so a rank's last batch
        may be one the others lack, and a collective there would wait forever."""
        if stop is None:
            return None
        lines, ranks = self.val_lines, self.dist.world_size
        common = math.ceil((lines // ranks) / self.cfg.eval.batch_size)
        return lambda i: i < common and distributed.agree(self.dist, stop.is_set(), self.device)

    def write_progress(self, progress: Progress, rate: Rate) -> None:
        """<run>/progress.json: where the run is, for `ddfp status` (rank 0; rewritten at each log)."""
        if not self.dist.is_main:
            return
        last = self.evals[-1] if self.evals else {}
        model = reported_model(self.cfg, [k.removeprefix("val_miou_") for k in last if k.startswith("val_miou_")])
        write_json_atomic({"split": self.paths.split_dir.name, "method": self.cfg.train.method,
                           "seed": self.cfg.train.seed, "iteration": progress.iteration, "total": self.max_iters,
                           "epoch": progress.epoch, "loss": self.history[-1].get("loss") if self.history else None,
                           "it_per_s": round(rate.per_s(progress.iteration), 4),
                           "eta_s": rate.eta_s(progress.iteration, self.max_iters),
                           "val_miou": last.get(f"val_miou_{model}"), "val_epoch": last.get("epoch"),
                           "updated": datetime.now().astimezone().isoformat(timespec="seconds")},
                          self.paths.out_dir / PROGRESS)

    def evaluate(self, phase: Phase, progress: Progress, stop: StopFlag | None = None) -> dict[str, Any] | None:
        """Validate after an epoch of `phase`: the student, and the teacher once that phase trains it.
        None, with nothing recorded, when `stop` was set during it."""
        models = {"student": self.learner.models.student}
        if phase.semi and phase.ema_teacher:
            models["teacher"] = self.learner.models.teacher
        for model in models.values():
            distributed.broadcast_buffers(model, self.dist)  # every val shard sees rank 0's BN statistics
        res = evaluate_models(models, self.val, self.cfg, self.device, self.stop_check(stop))
        if res is None:
            return None
        scores = {f"val_miou_{k}": v["miou"] for k, v in res.items()}
        self.evals.append({"epoch": progress.epoch, "iteration": progress.iteration, **scores})
        per_class = {f"iou_{model}/{cls}": iou for model, r in res.items() for cls, iou in r["iou"].items()}
        self.tracker.log_metrics({**scores, **per_class}, progress.iteration)
        if self.dist.is_main:
            tqdm.write(f"epoch {progress.epoch}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        return res


__all__ = ["Progress", "RunPaths", "StopFlag", "Trainer", "evaluation_due", "fingerprint", "not_resumable"]
