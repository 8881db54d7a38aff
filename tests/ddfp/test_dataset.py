"""SegDataset: outputs per mode, seeded determinism, image/mask alignment, no mask for unlabelled."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddfp.data.dataset import SampleReadError, SegDataset
from ddfp.data.spec import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from pipeline.train.loaders import read_split_file

NUM_CLASSES = 5
H, W = 40, 56


def _column_classes() -> np.ndarray:
    # Asymmetric along x, so a flip of the image without its mask (or vice versa) shows.
    return (np.arange(W) // 7 % NUM_CLASSES).astype(np.uint8)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """Three images whose pixel value encodes the class: image = 40 * class, mask = class."""
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    mask = np.tile(_column_classes(), (H, 1))
    for i in range(3):
        Image.fromarray(np.repeat((mask * 40)[..., None], 3, axis=2)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "ann" / f"{i}.png")
    return tmp_path


def _lines(with_masks: bool = True) -> list[tuple[str, str | None]]:
    return [(f"img/{i}.png", f"ann/{i}.png" if with_masks else None) for i in range(3)]


def _dataset(root: Path, mode: str, lines=None, crop: int = 32, scales=(0.75, 1.5)) -> SegDataset:
    return SegDataset(root, lines or _lines(), mode, crop, scales, NUM_CLASSES)  # type: ignore[arg-type]


def _pixel_values(img: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return torch.round((img * std + mean) * 255)


def test_labeled_shapes_and_types(root: Path) -> None:
    sample = _dataset(root, "labeled")[0]
    assert sample["img"].shape == (3, 32, 32) and sample["img"].dtype == torch.float32
    assert sample["mask"].shape == (32, 32) and sample["mask"].dtype == torch.long


def test_unlabeled_needs_no_mask_and_marks_padding(root: Path) -> None:
    ds = _dataset(root, "unlabeled", lines=_lines(with_masks=False), crop=80)  # crop > image: padded
    sample = ds[(1, 7)]
    assert set(sample) == {"img_w", "img_s", "ignore"}
    assert sample["img_w"].shape == sample["img_s"].shape == (3, 80, 80)
    ignore = sample["ignore"]
    assert ignore.dtype == torch.long and set(ignore.unique().tolist()) == {0, IGNORE_INDEX}
    padded = _pixel_values(sample["img_w"])[:, ignore == IGNORE_INDEX]
    assert (padded == 0).all()


def test_val_is_whole_image(root: Path) -> None:
    sample = _dataset(root, "val")[2]
    assert sample["img"].shape == (3, H, W) and sample["mask"].shape == (H, W) and sample["id"] == "2"


def test_seeded_items_are_reproducible_and_leave_global_rng(root: Path) -> None:
    ds = _dataset(root, "unlabeled")
    state = torch.get_rng_state()
    a, b, c = ds[(0, 123)], ds[(0, 123)], ds[(0, 124)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_flip_and_crop_keep_image_and_mask_aligned(root: Path) -> None:
    ds = _dataset(root, "labeled", crop=24, scales=(1.0, 1.0))  # no resampling: exact pixel check
    windows = torch.from_numpy(_column_classes()).long().unfold(0, 24, 1)  # every unflipped crop row
    flipped = []
    for seed in range(12):
        sample = ds[(0, seed)]
        assert torch.equal(_pixel_values(sample["img"])[0], sample["mask"].float() * 40)
        row = sample["mask"][0]
        flipped.append(not (windows == row).all(1).any().item())
        assert (windows == row).all(1).any() or (windows.flip(1) == row).all(1).any()
    assert 0 < sum(flipped) < len(flipped)  # both flipped and unflipped samples occurred


def test_labeled_requires_masks(root: Path) -> None:
    with pytest.raises(ValueError, match="need a mask"):
        _dataset(root, "labeled", lines=_lines(with_masks=False))


def test_read_split_file(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("JPEGImages/a.jpg SegmentationClass/a.png\n\nJPEGImages/b.jpg\n")
    assert read_split_file(path) == [("JPEGImages/a.jpg", "SegmentationClass/a.png"), ("JPEGImages/b.jpg", None)]
    path.write_text("a b c\n")
    with pytest.raises(ValueError, match="list.txt:1"):
        read_split_file(path)


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("broken", ["truncated jpeg", "garbage jpeg", "truncated mask"])
def test_a_file_that_does_not_decode_is_named(root: Path, broken: str) -> None:
    image = np.asarray(Image.open(root / "img" / "0.png"))
    Image.fromarray(image).save(root / "img" / "0.jpg", quality=95)
    lines = [("img/0.jpg", "ann/0.png")]
    if broken == "truncated jpeg":
        bad = _truncated(root / "img" / "0.jpg")
    elif broken == "garbage jpeg":
        bad = root / "img" / "0.jpg"
        bad.write_bytes(b"\xff\xd8 not a jpeg at all" * 20)
    else:
        bad = _truncated(root / "ann" / "0.png")
    for mode in ("labeled", "val"):
        with pytest.raises(SampleReadError, match=re.escape(str(bad))):
            _dataset(root, mode, lines=lines)[0]


def test_two_strong_views_share_the_weak_geometry_and_differ_in_colour(root: Path) -> None:
    # UniMatch's two strong views: one crop/flip for all views of an image, colour drawn per view.
    ds = SegDataset(root, _lines(False), "unlabeled", 32, (0.75, 1.5), NUM_CLASSES, strong_views=2)
    samples = [ds[(i, 7)] for i in range(3)]
    assert all(set(s) == {"img_w", "img_s", "img_s2", "ignore"} for s in samples)
    assert any(not torch.equal(s["img_s"], s["img_s2"]) for s in samples)  # independent colour draws
    ds._strong = lambda image: image  # no colour ops: what is left is the geometry, shared with the weak view
    for i in range(3):
        s = ds[(i, 7)]
        assert torch.equal(s["img_w"], s["img_s"]) and torch.equal(s["img_w"], s["img_s2"])
    one = SegDataset(root, _lines(False), "unlabeled", 32, (0.75, 1.5), NUM_CLASSES)
    two = SegDataset(root, _lines(False), "unlabeled", 32, (0.75, 1.5), NUM_CLASSES, strong_views=2)
    # The first strong view is drawn as before: a second view only appends draws.
    assert torch.equal(one[(0, 3)]["img_s"], two[(0, 3)]["img_s"])
