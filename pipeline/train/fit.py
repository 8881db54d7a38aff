"""fit(): the explicit training loop around ddfp.step.train_step.

It drives a Trainer (pipeline.train.trainer: models, optimisers, checkpoints) through its epochs, with
tracking, the evaluation and checkpoint cadence, a sweep's pruning hook and SLURM's stop request.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm import tqdm

from pipeline.params import Config
from ddfp.schedule import flow_lr
from ddfp.step import Phase
from pipeline.train import distributed, runlock
from pipeline.train.distributed import SINGLE, DistEnv
from pipeline.tracking.tracker import (NullTracker, RunInfo, Tracker, dvc_hashes, open_tracker, project_dir,
                               write_config_artifact)
from pipeline.train.trainer import RunPaths, Trainer, amp_dtype, select_device


class Interrupted(KeyboardInterrupt):
    """Training stopped at an iteration boundary on request (SLURM's USR2 before a time limit or a
    preemption), after saving: like Ctrl-C, an outside stop, not a failure."""


def _train_epoch(tr: Trainer, bar: tqdm) -> None:
    """Iterations of the current epoch (from where a resume left off), then the epoch's end."""
    cfg = tr.cfg
    phase = Phase.at_epoch(tr.epoch, cfg)
    for group in tr.opt_flow.param_groups:
        group["lr"] = flow_lr(cfg, tr.epoch)
    tr.loaders.set_epoch(tr.epoch, tr.iter_in_epoch)
    for bl, bu in zip(tr.loaders.labeled, tr.loaders.unlabeled):
        # Diagnostics cost a flow pass: compute them only where they are logged.
        logged = (tr.iteration + 1) % cfg.run.log_every == 0 or tr.iteration + 1 >= tr.max_iters
        logs = tr.run_iteration(tr.to_batch(bl, bu), phase, diagnostics=logged)
        tr.iter_in_epoch += 1
        tr.iteration += 1
        bar.update(1)
        if logged:
            tr.log(logs, bar)
        if tr.finished:
            break
        if tr.stop is not None and distributed.agree(tr.dist, tr.stop.is_set(), tr.device):
            tr.save()  # at an iteration boundary: a consistent state, the same on every rank
            raise Interrupted(f"stopped at iteration {tr.iteration} on request")
        if tr.iteration % cfg.run.ckpt_every == 0 and tr.iter_in_epoch < tr.iters_per_epoch:
            tr.save()
    if tr.iter_in_epoch < tr.iters_per_epoch:
        tr.save()  # stopped early by train.max_iters
        return
    tr.epoch += 1
    tr.iter_in_epoch = 0
    if tr.epoch % cfg.run.eval_every == 0 or tr.epoch == cfg.train.epochs:
        res = tr.evaluate()
        tr.save()  # before the hook: a sweep's pruner may stop the run here
        if tr.on_eval is not None:
            tr.on_eval(tr.epoch, res[cfg.eval.model if cfg.eval.model in res else "student"]["miou"])
        return
    tr.save()


def _start_tracking(tr: Trainer, parent_run_id: str | None) -> None:
    """Open the run (or reopen the checkpoint's run) unless the checkpoint is already finished."""
    if tr.saved_done or tr.tracker.run_id is not None:
        return
    p = tr.paths
    info = RunInfo(split=p.split_dir.name, world_size=tr.dist.world_size, device=str(tr.device),
                   precision=str(tr.dtype or torch.float32).removeprefix("torch."),
                   data_hashes=dvc_hashes(project_dir(), {"data": p.data_root, "splits": p.split_dir,
                                                       "weights": p.weights}))
    tr.tracker.start(tr.cfg, info, resume_id=tr.resumed_run_id, parent_id=parent_run_id)
    if tr.resumed_run_id is None:
        write_config_artifact(tr.cfg, tr.tracker)


def fit(cfg: Config, paths: RunPaths, tracker: Tracker | None = None, progress: bool = True, *,
        parent_run_id: str | None = None, on_eval: Callable[[int, float], None] | None = None,
        dist: DistEnv = SINGLE, stop: Any = None) -> dict[str, Any]:
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
         on_eval: Callable[[int, float], None] | None, dist: DistEnv, stop: Any) -> dict[str, Any]:
    device = dist.device(cfg.run.device)
    tracker = tracker or (open_tracker(cfg, run_dir=paths.out_dir) if dist.is_main else NullTracker())
    tr = Trainer(cfg, paths, tracker, device, dist)
    tr.on_eval, tr.stop = on_eval, stop
    progress = progress and dist.is_main
    tr.try_resume()
    _start_tracking(tr, parent_run_id)
    try:
        with tqdm(total=tr.max_iters, initial=tr.iteration, desc=f"train {cfg.train.method}",
                  disable=not progress, dynamic_ncols=True) as bar:
            while not tr.finished and tr.epoch < cfg.train.epochs:
                _train_epoch(tr, bar)
        if not tr.saved_done:  # e.g. a resumed run that a smaller train.max_iters already ends
            tr.save()
    except BaseException as err:
        tr.tracker.finish("KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    tr.tracker.finish("FINISHED")
    return {"iterations": tr.iteration, "epochs": tr.epoch, "skipped": tr.skipped, "evaluations": tr.evals,
            "checkpoint": str(paths.ckpt), "run_id": tr.tracker.run_id or tr.resumed_run_id,
            **({"rank": dist.rank, "student_digest": distributed.digest(tr.models.student)} if dist.distributed else {})}


__all__ = ["Interrupted", "RunPaths", "Trainer", "amp_dtype", "fit", "select_device"]
