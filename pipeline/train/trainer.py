"""The state of one training run around ddfp.step.train_step (pipeline.train.fit.fit drives it).

Owns devices, AMP, the two optimisers and their schedules, the teacher update, evaluation and
checkpoints. A checkpoint holds everything for an exact resume; a run resumes from one when it
belongs to the same configuration and starts afresh (saying so) when it does not.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.params import Config, from_mapping
from ddfp.data.spec import get_spec
from ddfp.flow import DensityEstimator
from ddfp.model import build_model
from ddfp.schedule import poly_lr
from ddfp.step import Batch, Models, Phase, train_step
from ddfp.teacher import ema_decay, hand_off, make_teacher, update_teacher
from pipeline.train import checkpoint, distributed
from pipeline.train.code_version import code_digest
from pipeline.train.distributed import SINGLE, DistEnv
from pipeline.train.validation import evaluate_models
from pipeline.files import write_json_atomic
from pipeline.train.loaders import TrainLoaders, train_loaders, val_loader
from pipeline.secrets import redact_tree
from pipeline.tracking.tracker import Tracker

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


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA where supported, fp16 on older GPUs, fp32 (no autocast) on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fingerprint(cfg: Config) -> dict[str, Any]:
    """What must match for a checkpoint to resume: the values that train the weights, except
    train.max_iters, which only says where a run stops (a longer run continues a shorter one)."""
    return {k: v for k, v in cfg.training_values().items() if k != "train.max_iters"}


@torch.no_grad()
def _snapshot(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
    # One fused copy per dtype group on GPU, and no host sync: this runs every iteration.
    return torch._foreach_mul(buffers, 1) if buffers else []


@torch.no_grad()
def _restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    if buffers:
        torch._foreach_copy_(buffers, saved)


class Trainer:
    """State of one training run; `fit` drives it."""

    def __init__(self, cfg: Config, paths: RunPaths | None, tracker: Tracker, device: torch.device,
                 dist: DistEnv = SINGLE) -> None:
        self.cfg, self.paths, self.tracker, self.device, self.dist = cfg, paths, tracker, device, dist
        spec = get_spec(cfg.data.dataset)
        self.spec = spec
        seed_everything(cfg.train.seed)
        weights = str(paths.weights) if paths and paths.weights else None
        student = distributed.prepare_student(build_model(cfg.model, spec.num_classes, weights).to(device), dist, device)
        flow = DensityEstimator(cfg.flow, cfg.model.head_channels, spec.num_classes).to(device)
        distributed.broadcast_module(flow, dist)
        self.models = Models(student, make_teacher(student).to(device), flow)
        t = cfg.train
        head_mult = t.head_lr_mult if t.head_lr_mult is not None else spec.head_lr_mult
        self.opt_seg = torch.optim.SGD(student.param_groups(t.lr, head_mult), lr=t.lr, momentum=t.momentum,
                                       weight_decay=t.weight_decay)
        self.opt_flow = torch.optim.Adam(self.models.flow.parameters(), lr=cfg.flow.lr, betas=cfg.flow.betas)
        self.dtype = amp_dtype(t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        # Without paths (benchmarks) there is no data: the caller feeds batches to run_iteration.
        self.loaders: TrainLoaders | None = None
        self.iters_per_epoch = t.max_iters or 1
        if paths is not None:
            self.loaders = train_loaders(cfg, paths.data_root, paths.split_dir, dist.rank, dist.world_size)
            self.val = val_loader(cfg, paths.data_root, paths.split_dir, dist.rank, dist.world_size)
            self.iters_per_epoch = self.loaders.iters_per_epoch
        self.total_iters = t.epochs * self.iters_per_epoch  # the LR schedule's length
        self.max_iters = min(self.total_iters, t.max_iters or math.inf)  # where this run stops
        self.epoch, self.iter_in_epoch, self.iteration = 0, 0, 0
        self.skipped = {"seg": 0, "flow": 0}
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.saved_done = False  # whether the checkpoint on disk is this run's finished state
        self.resumed_run_id: str | None = None  # the tracker run a resumed checkpoint belongs to
        self.on_eval: Callable[[int, float], None] | None = None
        self.stop: Any = None  # an Event-like .is_set(): stop at the next iteration boundary (SLURM)

    # ---- checkpoints -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Reached where this run stops (the schedule's end or train.max_iters)."""
        return self.iteration >= self.max_iters

    @property
    def complete(self) -> bool:
        return self.finished or self.epoch >= self.cfg.train.epochs

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": redact_tree(self.cfg.to_dict()), "done": self.complete,  # a DVC output and MLflow artifact
            "student": self.models.student.state_dict(), "teacher": self.models.teacher.state_dict(),
            "flow": self.models.flow.state_dict(),
            "opt_seg": self.opt_seg.state_dict(), "opt_flow": self.opt_flow.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": checkpoint.rng_state(),
            "epoch": self.epoch, "iter_in_epoch": self.iter_in_epoch, "iteration": self.iteration,
            "skipped": dict(self.skipped), "history": self.history, "evals": self.evals,
            "run_id": self.tracker.run_id or self.resumed_run_id, "code": code_digest(),
        }

    def save(self) -> None:
        if self.dist.is_main:  # every rank holds the same state (averaged gradients); one writes it
            checkpoint.save_atomic(self.state_dict(), self.paths.ckpt)
            write_json_atomic(self.history, self.paths.log)
            write_json_atomic(self.evals, self.paths.val_log)
        self.saved_done = self.complete

    def try_resume(self) -> None:
        """Load the run's checkpoint (the previous one if it is damaged) if it is of this configuration."""
        state, source = checkpoint.load_resumable(self.paths.ckpt)
        if state is None:
            return
        if fingerprint(from_mapping(state["config"])) != fingerprint(self.cfg):
            tqdm.write(f"{source}: checkpoint of another configuration, training from scratch")
            return
        if state.get("code") != code_digest():  # e.g. `dvc repro` after an edit of ddfp/
            tqdm.write(f"{source}: checkpoint of other training code, training from scratch")
            return
        for name in ("student", "teacher", "flow"):
            getattr(self.models, name).load_state_dict(state[name])
        self.opt_seg.load_state_dict(state["opt_seg"])
        self.opt_flow.load_state_dict(state["opt_flow"])
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        for key in ("epoch", "iter_in_epoch", "iteration", "skipped", "history", "evals"):
            setattr(self, key, state[key])
        self.saved_done = bool(state["done"])
        self.resumed_run_id = state.get("run_id")
        tqdm.write(f"resumed {source} at iteration {self.iteration}")

    # ---- one iteration -----------------------------------------------------------------------
    def to_batch(self, bl: dict, bu: dict) -> Batch:
        to = lambda x: x.to(self.device, non_blocking=True)  # noqa: E731
        return Batch(to(bl["img"]), to(bl["mask"]), to(bu["img_w"]), to(bu["img_s"]), to(bu["ignore"]))

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def run_iteration(self, batch: Batch, phase: Phase, diagnostics: bool = True) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        for group in self.opt_seg.param_groups:
            group["lr"] = poly_lr(group["base_lr"], self.iteration, self.total_iters, t.poly_power)
        self.models.student.train()
        t0 = t.sup_only_epochs * self.iters_per_epoch  # the first semi-supervised iteration
        if phase.semi and self.iteration == t0:
            # Before the snapshot: a skipped first step keeps the handed-off teacher.
            hand_off(self.models.teacher, self.models.student)
        buffers = self._forward_buffers()
        saved = _snapshot(buffers)
        with self._autocast():
            out = train_step(self.models, batch, phase, self.cfg, diagnostics)
        self.opt_seg.zero_grad(set_to_none=True)
        self.scaler.scale(out.seg_loss).backward()
        # A non-finite BN statistic is as poisonous as a non-finite loss (the EMA would carry it into
        # the teacher), so its norm joins the loss in the one finite check below.
        stats = torch.nn.utils.get_total_norm([b for b in buffers if b.is_floating_point()])
        checks = [out.seg_loss.detach().float(), stats.float()]
        if out.flow_loss is not None:
            self.opt_flow.zero_grad(set_to_none=True)
            out.flow_loss.backward()
            checks.append(out.flow_loss.detach().float())
        # Gradient sync point (several ranks): the mean gradient and mean losses, before clipping and
        # before the finite check, so every rank clips, checks and steps identically.
        synced = list(self.models.student.parameters())
        if out.flow_loss is not None:
            synced += list(self.models.flow.parameters())
        checks = distributed.average_gradients(self.dist, synced, checks)
        loss = checks[0]
        if out.flow_loss is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(self.models.flow.parameters(), self.cfg.flow.grad_clip)
            checks[2] = checks[2] + gnorm
        # The one host sync of an iteration: skip any update whose loss (or flow gradient) is not finite.
        finite = torch.isfinite(torch.stack(checks)).tolist()
        if finite[0] and finite[1]:
            self.scaler.step(self.opt_seg)
            self.scaler.update()
            if phase.semi:
                decay = ema_decay(self.iteration, t0, self.cfg.teacher.ema_decay)
                update_teacher(self.models.teacher, self.models.student, decay, self.cfg.teacher.mode)
        else:
            _restore(buffers, saved)  # the skipped batch leaves no trace in any BN statistic
            self.skipped["seg"] += 1
        if out.flow_loss is not None:
            if finite[2]:
                self.opt_flow.step()
            else:
                self.skipped["flow"] += 1
        return {"loss": loss, **out.logs}

    def _forward_buffers(self) -> list[torch.Tensor]:
        """The buffers a training forward writes: the student's BN statistics and counters, and the
        teacher's when it pseudo-labels in train mode."""
        models = [self.models.student]
        if self.cfg.teacher.pseudo_label_mode == "train":
            models.append(self.models.teacher)
        return [b for m in models for b in m.buffers()]

    # ---- logging and evaluation --------------------------------------------------------------
    def log(self, logs: dict[str, torch.Tensor], bar: tqdm) -> None:
        row = {k: round(float(v), 6) for k, v in logs.items()}
        row.update(iteration=self.iteration, epoch=self.epoch, lr=self.opt_seg.param_groups[0]["lr"],
                   flow_lr=self.opt_flow.param_groups[0]["lr"], skipped_seg=self.skipped["seg"],
                   skipped_flow=self.skipped["flow"])
        self.history.append(row)
        self.tracker.log_metrics({k: v for k, v in row.items() if k not in ("iteration", "epoch")}, self.iteration)
        bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "flow_bpd", "confident_ratio") if k in row})

    def evaluate(self) -> dict[str, Any]:
        models = {"student": self.models.student}
        if Phase.at_epoch(self.epoch - 1, self.cfg).semi:
            models["teacher"] = self.models.teacher
        for model in models.values():
            distributed.broadcast_buffers(model, self.dist)  # every val shard sees rank 0's BN statistics
        res = evaluate_models(models, self.val, self.cfg, self.device)
        row = {"epoch": self.epoch, "iteration": self.iteration, **{f"val_miou_{k}": v["miou"] for k, v in res.items()}}
        self.evals.append(row)
        per_class = {f"iou_{model}/{cls}": iou for model, r in res.items() for cls, iou in r["iou"].items()}
        self.tracker.log_metrics({**{k: v for k, v in row.items() if k.startswith("val")}, **per_class}, self.iteration)
        if self.dist.is_main:
            tqdm.write(f"epoch {self.epoch}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith("val")))
        return res


__all__ = ["RunPaths", "Trainer", "amp_dtype", "select_device"]
