"""The generated demo dataset: deterministic, valid labels, void borders, every class, VOC layout on disk."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddfp.data.masks import read_mask, voc_palette
from ddfp.data.spec import IGNORE_INDEX, SYNTHETIC_CLASSES
from ddfp.data.synthetic import generate, make_sample
from pipeline import params
from pipeline.stages.synthetic import MARKER, write_synthetic
from tests.helpers.archives import pack_tar

NUM_CLASSES = len(SYNTHETIC_CLASSES)


@pytest.fixture(scope="module")
def cfg() -> params.Config:
    base = params.load(profile="smoke")
    return params.replace(base, {"synthetic.num_train": 40, "synthetic.num_val": 8, "synthetic.image_size": 48})


def test_same_seed_same_data_other_seed_other_data(cfg: params.Config) -> None:
    first = list(generate(cfg.synthetic))
    again = list(generate(cfg.synthetic))
    other = list(generate(params.replace(cfg, {"synthetic.seed": 1}).synthetic))
    assert [s[0] for s in first] == [s[0] for s in again]
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))


def test_counts_splits_and_types(cfg: params.Config) -> None:
    samples = list(generate(cfg.synthetic))
    splits = [s[3] for s in samples]
    assert splits.count("train") == 40 and splits.count("val") == 8
    assert len({s[0] for s in samples}) == len(samples)
    _, image, mask, _ = samples[0]
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 48) and mask.dtype == np.uint8


def test_values_and_void_borders() -> None:
    for seed in range(20):
        _, mask = make_sample(np.random.default_rng(seed), 64)
        assert set(np.unique(mask).tolist()) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
        assert (mask == IGNORE_INDEX).any() and (mask != IGNORE_INDEX).any()
        # Two different classes never touch: a void band always lies between regions.
        for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
            labelled = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert np.array_equal(a[labelled], b[labelled])


def test_every_class_occurs_often(cfg: params.Config) -> None:
    counts = np.zeros(NUM_CLASSES, int)
    for _, _, mask, split in generate(cfg.synthetic):
        if split == "train":
            counts[np.unique(mask[mask != IGNORE_INDEX])] += 1
    assert counts[0] == 40
    assert counts[1:].min() >= 5, counts  # ~2 objects per image over 7 classes: ~11 each expected


def test_write_synthetic_voc_layout(cfg: params.Config, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    write_synthetic(cfg, root)
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 40 and len(val) == 8 and not set(train) & set(val)
    with Image.open(root / "SegmentationClass" / f"{train[0]}.png") as png:
        assert png.mode == "P"
        assert png.getpalette()[: 3 * 256] == voc_palette()
    expected = next(generate(cfg.synthetic))[2]
    assert np.array_equal(read_mask(root / "SegmentationClass" / f"{train[0]}.png", NUM_CLASSES), expected)
    with Image.open(root / "JPEGImages" / f"{train[0]}.jpg") as jpg:
        assert jpg.format == "JPEG" and jpg.size == (48, 48)
    assert voc_palette()[3 * 255: 3 * 256] == [224, 224, 192]  # VOC's void colour


def test_rerun_replaces_and_leaves_no_temporaries(cfg: params.Config, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    write_synthetic(cfg, root)
    (root / "stale.txt").write_text("from an earlier run")
    write_synthetic(params.replace(cfg, {"synthetic.num_train": 12}), root)
    assert not (root / "stale.txt").exists()
    assert len((root / "ImageSets/Segmentation/train.txt").read_text().split()) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_refuses_to_replace_foreign_folder(cfg: params.Config, tmp_path: Path) -> None:
    root = tmp_path / "precious"
    root.mkdir()
    (root / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match=MARKER):
        write_synthetic(cfg, root)
    assert (root / "thesis.tex").exists()


def test_pack_tar(cfg: params.Config, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    write_synthetic(params.replace(cfg, {"synthetic.num_train": 4, "synthetic.num_val": 2}), root)
    tar_path = tmp_path / "out" / "synthetic.tar"
    pack_tar(root, tar_path, "VOCdevkit/VOC2012")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt" in names
    assert sum(n.startswith("VOCdevkit/VOC2012/JPEGImages/") and n.endswith(".jpg") for n in names) == 6
