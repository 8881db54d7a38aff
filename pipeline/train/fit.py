"""fit(): the explicit training loop around ddfp.methods.train_step.

It owns where the run stands (a Progress: epoch, iteration, skipped updates) and drives a Trainer
(pipeline.train.trainer: data, learner, checkpoints) through its epochs, with tracking, the evaluation
and checkpoint cadence, a sweep's pruning hook and SLURM's stop request.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import yaml
from tqdm import tqdm

from ddfp.schedule import flow_lr
from ddfp.methods import phase_at, reported_model
from pipeline.params import Config
from pipeline.secrets import redact
from pipeline.tracking.identity import RunInfo, dvc_hashes, project_dir
from pipeline.tracking.tracker import NullTracker, Tracker, open_tracker
from pipeline.train import checkpoint, distributed, runlock
from pipeline.train.console import PlainProgress, Rate, progress_bar
from pipeline.train.distributed import SINGLE, DistEnv
from pipeline.train.trainer import Progress, RunPaths, StopFlag, Trainer, evaluation_due, not_resumable


class Interrupted(KeyboardInterrupt):
    """Training stopped at an iteration boundary on request (SLURM's USR2 before a time limit or a
    preemption), after saving: like Ctrl-C, an outside stop, not a failure."""


OnEval = Callable[[int, float], None]
T = TypeVar("T")


@dataclass(frozen=True)
class FitSummary:
    """Where a run ended, its evaluations (the rows of val_log.json) and its checkpoint."""

    iterations: int
    epochs: int
    skipped: dict[str, int]
    evaluations: list[dict[str, Any]]
    checkpoint: str
    run_id: str | None
    rank: int | None = None  # several ranks: this one, and a digest of its student (the ranks' must agree)
    student_digest: str | None = None

    def scalars(self) -> dict[str, Any]:
        """What `ddfp train` prints: all but the evaluations (in val_log.json); rank and digest when set."""
        keys = ["iterations", "epochs", "skipped", "checkpoint", "run_id"]
        return {k: getattr(self, k) for k in keys + (["rank", "student_digest"] if self.rank is not None else [])}


def steps(pairs: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive groups of n (the micro-batches of one optimiser step); a short tail is dropped."""
    it = iter(pairs)
    while len(group := list(itertools.islice(it, n))) == n:
        yield group


def _train_epoch(tr: Trainer, p: Progress, bar: tqdm | PlainProgress, rate: Rate, on_eval: OnEval | None,
                 stop: StopFlag | None) -> None:
    """Iterations of the current epoch (from where a resume left off), then the epoch's end."""
    cfg = tr.cfg
    phase = phase_at(p.epoch, cfg)
    for group in tr.learner.opt_flow.param_groups:
        group["lr"] = flow_lr(cfg, p.epoch)
    tr.loaders.set_epoch(p.epoch, p.iter_in_epoch)
    for micro in steps(zip(tr.loaders.labeled, tr.loaders.unlabeled), tr.loaders.accumulation):
        # Diagnostics cost a flow pass: compute them only where they are logged.
        logged = (p.iteration + 1) % cfg.run.log_every == 0 or p.iteration + 1 >= tr.max_iters
        batches = [tr.to_batch(bl, bu) for bl, bu in micro]
        step = tr.learner.run_iteration(batches, phase, p.iteration, diagnostics=logged)
        p.advance(step)
        bar.update(1)
        if logged:
            tr.log(step.logs, p, bar)
            tr.write_progress(p, rate)
        if tr.finished(p):
            break
        if stop is not None and distributed.agree(tr.dist, stop.is_set(), tr.device):
            tr.save(p)  # at an iteration boundary: a consistent state, the same on every rank
            raise Interrupted(f"stopped at iteration {p.iteration} on request")
        if p.iteration % cfg.run.ckpt_every == 0 and p.iter_in_epoch < tr.iters_per_epoch:
            tr.save(p)
    if p.iter_in_epoch < tr.iters_per_epoch:
        tr.save(p)  # stopped early by train.max_iters
        return
    p.next_epoch()
    if evaluation_due(tr.cfg, p, tr.evals):
        _evaluate(tr, p, on_eval, stop)
        return
    tr.save(p)


def _evaluate(tr: Trainer, p: Progress, on_eval: OnEval | None, stop: StopFlag | None) -> None:
    """Evaluate the completed epoch and save. A stop request during the evaluation saves the epoch's
    end without it and raises Interrupted: the resumed run evaluates first (_evaluation_due)."""
    res = tr.evaluate(phase_at(p.epoch - 1, tr.cfg), p, stop)
    tr.save(p)  # before the hook: a sweep's pruner may stop the run here
    if res is None:
        raise Interrupted(f"stopped during the evaluation of epoch {p.epoch} on request")
    if on_eval is not None:
        on_eval(p.epoch, res[reported_model(tr.cfg, res)]["miou"])


def write_config_artifact(cfg: Config, tracker: Tracker) -> None:
    """The resolved config as `config.yaml` in the run's artifacts (secrets redacted)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(redact(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
        tracker.log_artifact(path)


def _start_tracking(tr: Trainer, parent_run_id: str | None) -> None:
    """Open the run (or reopen the checkpoint's run) unless the checkpoint is already finished."""
    if tr.saved_done or tr.tracker.run_id is not None:
        return
    p = tr.paths
    info = RunInfo(split=p.split_dir.name, world_size=tr.dist.world_size, device=str(tr.device),
                   precision=str(tr.learner.dtype or torch.float32).removeprefix("torch."),
                   data_hashes=dvc_hashes(project_dir(), {"data": p.data_root, "splits": p.split_dir,
                                                       "weights": p.weights}))
    tr.tracker.start(tr.cfg, info, resume_id=tr.resumed_run_id, parent_id=parent_run_id)
    if tr.resumed_run_id is None:
        write_config_artifact(tr.cfg, tr.tracker)


def fit(cfg: Config, paths: RunPaths, tracker: Tracker | None = None, progress: bool = True, *,
        parent_run_id: str | None = None, on_eval: OnEval | None = None,
        dist: DistEnv = SINGLE, stop: StopFlag | None = None) -> FitSummary:
    """Train (or resume, or find finished) the run in paths.out_dir; returns a summary.

    tracker: None opens the configured one (MLflow by default). on_eval(epoch, mIoU of the reported
    model) runs after each evaluation; it may raise to stop the run (a sweep's pruner).
    dist: this process's rank (pipeline.train.distributed.init); only rank 0 tracks, prints and saves.
    stop: an Event set by a signal handler: save at the next iteration boundary, raise Interrupted.
    Rank 0 holds the run directory's lock throughout: a second writer gets a BusyError at once.
    """
    with runlock.hold(paths.out_dir, enabled=dist.is_main):
        return _fit(cfg, paths, tracker, progress, parent_run_id, on_eval, dist, stop)


def _fit(cfg: Config, paths: RunPaths, tracker: Tracker | None, progress: bool, parent_run_id: str | None,
         on_eval: OnEval | None, dist: DistEnv, stop: StopFlag | None) -> FitSummary:
    device = dist.device(cfg.run.device)
    tracker = tracker or (open_tracker(cfg, run_dir=paths.out_dir) if dist.is_main else NullTracker())
    tr = Trainer(cfg, paths, tracker, device, dist)
    progress = progress and dist.is_main
    p = tr.try_resume()
    _start_tracking(tr, parent_run_id)
    try:
        if evaluation_due(tr.cfg, p, tr.evals):
            _evaluate(tr, p, on_eval, stop)
        rate = Rate(p.iteration)
        with progress_bar(tr.max_iters, p.iteration, f"train {cfg.train.method}", progress) as bar:
            while not tr.finished(p) and p.epoch < cfg.train.epochs:
                _train_epoch(tr, p, bar, rate, on_eval, stop)
        if not tr.saved_done:  # e.g. a resumed run that a smaller train.max_iters already ends
            tr.save(p)
        tr.write_progress(p, rate)  # the end, with the last evaluation
    except BaseException as err:
        tr.tracker.finish("KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    tr.tracker.finish("FINISHED")
    summary = FitSummary(p.iteration, p.epoch, p.skipped, tr.evals, str(paths.ckpt),
                         tr.tracker.run_id or tr.resumed_run_id)
    if dist.distributed:
        summary = replace(summary, rank=dist.rank, student_digest=distributed.digest(tr.learner.models.student))
    return summary


def finished_summary(cfg: Config, paths: RunPaths) -> FitSummary | None:
    """What fit would return without training a step: the summary of the checkpoint in paths.out_dir
    when it is cfg's run (of this training code) ended with nothing left to evaluate; else None.
    Loads no data and builds no model (a SLURM login node asks it before submitting)."""
    state, _ = checkpoint.load_resumable(paths.ckpt)
    if state is None or not_resumable(state, cfg):
        return None
    p = Progress.from_state(state)
    ended = p.epoch >= cfg.train.epochs or bool(cfg.train.max_iters and p.iteration >= cfg.train.max_iters)
    if not ended or evaluation_due(cfg, p, state["evals"]):
        return None
    return FitSummary(p.iteration, p.epoch, p.skipped, state["evals"], str(paths.ckpt), state.get("run_id"))


__all__ = ["FitSummary", "Interrupted", "finished_summary", "fit"]
