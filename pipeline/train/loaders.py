"""DataLoaders for a split directory (labeled.txt / unlabeled.txt / val.txt)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ddfp.config import ConfigError
from ddfp.data.dataset import SegDataset
from ddfp.data.sampling import EpochSampler
from ddfp.methods import method_spec
from pipeline.params import Config
from pipeline.train.distributed import shard

LABELED_STREAM, UNLABELED_STREAM = 1, 2


def read_split_file(path: str | Path) -> list[tuple[str, str | None]]:
    """Lines 'image [mask]' -> [(image, mask or None)]; blank lines skipped, anything else refused."""
    lines: list[tuple[str, str | None]] = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ValueError(f"{path}:{number}: expected 'image [mask]', got {raw!r}")
        lines.append((fields[0], fields[1] if len(fields) == 2 else None))
    return lines


@dataclass
class TrainLoaders:
    labeled: DataLoader
    unlabeled: DataLoader
    iters_per_epoch: int  # optimiser steps
    accumulation: int = 1  # micro-batches per step (gradient accumulation)

    def set_epoch(self, epoch: int, skip_iters: int = 0) -> None:
        for loader in (self.labeled, self.unlabeled):
            loader.sampler.set_epoch(epoch, skip_iters * self.accumulation * loader.batch_size)


def accumulation_steps(cfg: Config, world_size: int) -> int:
    """Micro-batches per optimiser step that keep train.global_batch with this many processes."""
    t = cfg.train
    per_step = t.batch_size * world_size
    if t.global_batch is None:
        return 1
    if t.global_batch % per_step:
        raise ConfigError(f"train.global_batch: {t.global_batch} is not a multiple of train.batch_size "
                          f"{t.batch_size} x {world_size} processes; change either, or set it to null")
    return t.global_batch // per_step


def global_batch_line(cfg: Config, world_size: int) -> str:
    """What the run does to keep the reference global batch, said at its start."""
    t, steps = cfg.train, accumulation_steps(cfg, world_size)
    how = f"{t.batch_size} + {t.batch_size} per process x {world_size} process(es)"
    if steps == 1:
        return f"global batch: {how} = {t.batch_size * world_size}"
    return (f"global batch {t.global_batch} (train.global_batch): {how} x {steps} accumulated micro-batches "
            f"per optimiser step; BN statistics are per micro-batch of {t.batch_size} + {t.batch_size}")


def _loader(dataset: SegDataset, sampler, batch_size: int, cfg: Config) -> DataLoader:
    # A private generator: otherwise creating the iterator draws from the global RNG, which the
    # checkpoint restores, and worker seeds would shift the training randomness.
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.run.num_workers,
        drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )


def train_loaders(cfg: Config, data_root: Path, split_dir: Path, rank: int = 0, world_size: int = 1) -> TrainLoaders:
    """One epoch = |unlabelled| draws from each list (labelled resampled to that size), or
    train.iters_per_epoch batches on every process when it is set."""
    num_classes = cfg.spec.num_classes
    lines_l = read_split_file(split_dir / "labeled.txt")
    lines_u = read_split_file(split_dir / "unlabeled.txt")
    d, t = cfg.data, cfg.train
    ds_l = SegDataset(data_root, lines_l, "labeled", d.crop_size, d.scale_range, num_classes)
    ds_u = SegDataset(data_root, lines_u, "unlabeled", d.crop_size, d.scale_range, num_classes,
                      method_spec(cfg).strong_views)
    # The authors' epoch makes a split with more labels (fewer unlabelled images) train fewer
    # iterations; a fixed budget keeps the label axis of a comparison free of that confound.
    steps = accumulation_steps(cfg, world_size)
    length = t.iters_per_epoch * t.batch_size * world_size * steps if t.iters_per_epoch else len(lines_u)
    samplers = [
        EpochSampler(len(lines_l), length, t.seed, LABELED_STREAM, t.batch_size, rank, world_size, steps),
        EpochSampler(len(lines_u), length, t.seed, UNLABELED_STREAM, t.batch_size, rank, world_size, steps),
    ]
    iters = samplers[0].per_rank // t.batch_size
    if iters < 1:
        raise ValueError(
            f"train.batch_size: {t.batch_size} x {world_size} processes exceeds the {length} unlabelled images"
        )
    return TrainLoaders(_loader(ds_l, samplers[0], t.batch_size, cfg), _loader(ds_u, samplers[1], t.batch_size, cfg),
                        iters, steps)


def val_loader(cfg: Config, data_root: Path, split_dir: Path, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The validation list, or one rank's exact shard of it (every image on exactly one rank: unlike
    DistributedSampler there is no padding, so no image is counted twice)."""
    num_classes = cfg.spec.num_classes
    lines = read_split_file(split_dir / "val.txt")
    ds = SegDataset(data_root, [lines[i] for i in shard(len(lines), rank, world_size)], "val", cfg.data.crop_size,
                    cfg.data.scale_range, num_classes)
    # A private generator, as for training: iterating draws nothing from the global RNG (dropout's), so
    # an evaluation abandoned on a stop request and redone after the resume leaves the run bit-exact.
    return DataLoader(ds, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.run.num_workers,
                      generator=torch.Generator().manual_seed(0))
