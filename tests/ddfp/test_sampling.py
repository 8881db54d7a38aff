"""EpochSampler: the authors' epoch length (DistributedSampler, then a DataLoader with drop_last)."""

import pytest

from ddfp.data.sampling import EpochSampler
from pipeline import params
from pipeline.stages.splits import PUBLISHED_COUNTS


@pytest.mark.parametrize("split,iters", [("1464", 570), ("732", 615), ("183", 650)])
def test_the_pascal_epoch_on_four_gpus_is_the_authors(split, iters):
    # Their logs: 45,600 / 80 = 570 iterations an epoch at 1464 labels, 49,200 / 80 = 615 at 732:
    # DistributedSampler pads each rank to ceil(U / 4) images, then batches of 4 drop the remainder.
    cfg = params.load(profile="pascal")
    labelled, unlabelled = PUBLISHED_COUNTS["pascal"][split]
    for rank in range(4):
        for items in (labelled, unlabelled):  # the labelled list is resampled to the unlabelled length
            sampler = EpochSampler(items, unlabelled, 2, 1, cfg.train.batch_size, rank, 4)
            assert sampler.per_rank // cfg.train.batch_size == iters
            assert len(list(sampler)) == iters * cfg.train.batch_size


def test_every_rank_draws_other_items_and_one_rank_draws_them_all():
    ranks = [[i for i, _ in EpochSampler(10, 10, 0, 1, 1, rank, 3)] for rank in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # ceil(10 / 3): the padding repeats two items
    assert set().union(*map(set, ranks)) == set(range(10))
    assert sorted(i for i, _ in EpochSampler(10, 10, 0, 1, 1)) == list(range(10))
