"""The `train` stage: one run of one split, in this process (or as one rank of torchrun), or, with
run.launcher: slurm, as a SLURM job this command waits for, so that DVC caches what the job wrote.
`ddfp submit` (pipeline.repro) brings every changed train stage up to date as one SLURM job array."""

from __future__ import annotations

from pathlib import Path

from ddfp.config import ConfigError
from pipeline.errors import BusyError
from pipeline.params import Config
from pipeline.train.fit import FitSummary
from pipeline.train.trainer import RunPaths, StopFlag


def checked_weights(cfg: Config, path: Path | None) -> Path | None:
    """The backbone file to load, or None when the model is not pretrained; a pretrained model
    without its file is a configuration error, not a silently random start."""
    weights = path if path and path.is_file() else None
    if cfg.model.pretrained and weights is None:
        raise ConfigError(f"model.pretrained is true but --weights {path} is not a file (run `ddfp weights`)")
    return weights


def run_paths(cfg: Config, data: Path, split_dir: Path, out: Path, weights: Path | None) -> RunPaths:
    return RunPaths(data, split_dir, out, checked_weights(cfg, weights))


def run_train(cfg: Config, paths: RunPaths, export: Path | None = None,
              stop: StopFlag | None = None) -> FitSummary | None:
    """Train (or resume) the run in paths.out_dir, then write its model to `export` (when given:
    pipeline.train.export); None on the ranks of torchrun other than the first. stop: set (by a
    signal handler) to save at the next iteration and raise Interrupted (a local launcher's worker).

    run.launcher: slurm trains nothing here: the run's own job is waited for while it is queued, a
    finished checkpoint is the result, else a job is submitted and waited for."""
    from pipeline.squeue import adopted_job

    if cfg.run.launcher == "slurm":
        from pipeline.slurm import train_on_slurm

        summary = train_on_slurm(cfg, {paths.split_dir.name: paths})[paths.split_dir.name]
    else:
        job = adopted_job(paths.out_dir)
        if job is not None:  # e.g. `ddfp submit --no-wait`, then `dvc repro` with the local launcher
            raise BusyError(f"{paths.out_dir} belongs to SLURM job {job.job_id}, still queued or running; wait "
                            f"for it (`ddfp submit` does) or `scancel {job.job_id}`")
        summary = _train_here(cfg, paths, stop)
    if summary is not None and export is not None:
        from pipeline.train.export import export_run

        export_run(cfg, paths.out_dir, export)
    return summary


def _train_here(cfg: Config, paths: RunPaths, stop: StopFlag | None = None) -> FitSummary | None:
    from pipeline.train import distributed
    from pipeline.train.fit import fit

    env = distributed.init(cfg.run.device)
    try:
        summary = fit(cfg, paths, dist=env, stop=stop)
    finally:
        distributed.shutdown()
    return summary if env.is_main else None


__all__ = ["checked_weights", "run_paths", "run_train"]
