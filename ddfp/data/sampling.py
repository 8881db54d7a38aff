"""Epoch orders that depend only on (seed, stream, epoch): the key to bit-exact resume.

Each item comes with its own augmentation seed, so what a sample looks like does not depend on
worker count, worker order or on how many batches were skipped after a resume.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

_MOD = 2**63 - 1


def item_seed(seed: int, stream: int, epoch: int, position: int) -> int:
    return (((seed * 1_000_003 + stream) * 100_003 + epoch) * 10_000_019 + position) % _MOD


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (index, item seed) for one rank of one epoch.

    The epoch is `length` draws: shuffled passes over the items, concatenated (the authors resample
    the labelled list to the size of the unlabelled one). Ranks take every world_size-th position.
    Each rank gets ceil(length / world_size) positions, the last ones running into the next pass,
    as DistributedSampler pads its ranks, and drops the tail that does not fill a batch, as the
    authors' DataLoader(drop_last=True) does: their ceil(U / 4) // 4 iterations on 4 GPUs (570 an
    epoch at 1464 Pascal labels, where floor(U / 16) would give 569).

    With gradient accumulation over `accumulation` micro-batches a process stands in for that many
    ranks (world_size x accumulation in all): step s yields micro-batch a of virtual rank
    rank x accumulation + a, so one optimiser step sees the images that many processes would.
    per_rank counts the positions of one virtual rank.
    """

    def __init__(self, num_items: int, length: int, seed: int, stream: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, accumulation: int = 1) -> None:
        if num_items < 1:
            raise ValueError("EpochSampler: the list is empty")
        self.num_items, self.seed, self.stream, self.batch_size = num_items, seed, stream, batch_size
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        self.per_rank = (-(-length // self.ranks) // batch_size) * batch_size
        self.epoch, self.skip = 0, 0

    @property
    def ranks(self) -> int:
        """Virtual ranks: processes x accumulation steps."""
        return self.world_size * self.accumulation

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and how many of this rank's items were already consumed (resume)."""
        self.epoch, self.skip = epoch, skip

    def _order(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(item_seed(self.seed, self.stream, self.epoch, 0))
        passes = -(-self.per_rank * self.ranks // self.num_items)
        return torch.cat([torch.randperm(self.num_items, generator=gen) for _ in range(passes)])

    def _positions(self) -> Iterator[int]:
        """This process's positions in the epoch's order, micro-batch by micro-batch."""
        b = self.batch_size
        for step in range(self.per_rank // b):
            for a in range(self.accumulation):
                virtual = self.rank * self.accumulation + a
                for k in range(step * b, (step + 1) * b):
                    yield k * self.ranks + virtual

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order().tolist()
        for i, pos in enumerate(self._positions()):
            if i >= self.skip:
                yield order[pos], item_seed(self.seed, self.stream, self.epoch, pos + 1)

    def __len__(self) -> int:
        return self.per_rank * self.accumulation - self.skip
