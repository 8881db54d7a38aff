"""The `train` stage: one run of one split, in this process (or as one rank of torchrun), or, with
run.launcher: slurm, as a SLURM job this command waits for, so that DVC caches what the job wrote.
`ddfp submit` trains several splits as one SLURM job array in the train stage's layout."""

from __future__ import annotations

from pathlib import Path

from ddfp.config import ConfigError
from pipeline.params import Config
from pipeline.train.fit import FitSummary
from pipeline.train.trainer import RunPaths


def checked_weights(cfg: Config, path: Path | None) -> Path | None:
    """The backbone file to load, or None when the model is not pretrained; a pretrained model
    without its file is a configuration error, not a silently random start."""
    weights = path if path and path.is_file() else None
    if cfg.model.pretrained and weights is None:
        raise ConfigError(f"model.pretrained is true but --weights {path} is not a file (run `ddfp weights`)")
    return weights


def run_train(cfg: Config, data: Path, split_dir: Path, out: Path, weights: Path | None) -> FitSummary | None:
    """Train (or resume) the run in `out`; None on the ranks of torchrun other than the first."""
    from pipeline.train import distributed
    from pipeline.train.fit import fit

    paths = RunPaths(data, split_dir, out, checked_weights(cfg, weights))
    if cfg.run.launcher == "slurm":
        from pipeline.slurm import train_on_slurm

        return train_on_slurm(cfg, {split_dir.name: paths})[0]
    env = distributed.init(cfg.run.device)
    try:
        summary = fit(cfg, paths, dist=env)
    finally:
        distributed.shutdown()
    return summary if env.is_main else None


def run_submit(cfg: Config, data: Path, splits_dir: Path, runs: Path, weights_dir: Path, splits: list[str],
               block: bool = True) -> dict[str, FitSummary] | None:
    """Submit the splits as one job array; with `block`, wait until every job ended."""
    from pipeline.slurm import submit_training, wait

    weights = checked_weights(cfg, weights_dir / f"{cfg.model.backbone}.pth")
    # The train stage's layout: a submitted run is the one `dvc repro train@<split>-<method>` finds.
    paths = {s: RunPaths(data, splits_dir / s, runs / s / cfg.train.method, weights) for s in splits}
    for split, p in paths.items():
        if not (p.split_dir / "labeled.txt").is_file():
            raise FileNotFoundError(f"{p.split_dir}/labeled.txt: split {split} not prepared (run `ddfp splits`)")
    jobs = submit_training(cfg, paths)
    if not block:
        return None
    return dict(zip(splits, wait(jobs, splits)))


__all__ = ["checked_weights", "run_submit", "run_train"]
