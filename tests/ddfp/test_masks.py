"""Masks are read as stored class indices (palette or grey), and bad values are refused by file name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddfp.data.masks import classes_present, read_mask

INDICES = np.array([[0, 1, 2, 255], [3, 2, 1, 0]], dtype=np.uint8)


def _palette_png(path: Path, mask: np.ndarray, palette: list[int]) -> Path:
    image = Image.fromarray(mask)
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(path)
    return path


def test_palette_indices_not_luminance(tmp_path: Path) -> None:
    # Index 1 is white, 2 black, 3 grey: luminance would read 255, 0 and 128 instead of 1, 2, 3.
    palette = [0, 0, 0, 255, 255, 255, 0, 0, 0, 128, 128, 128]
    path = _palette_png(tmp_path / "m.png", INDICES, palette)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert not np.array_equal(np.array(image.convert("L")), INDICES)  # the authors' bug, for contrast
    mask = read_mask(path, num_classes=21)
    assert mask.dtype == np.uint8
    assert np.array_equal(mask, INDICES)


def test_grey_index_png_like_label_train_ids(tmp_path: Path) -> None:
    path = tmp_path / "aachen_000000_000019_gtFine_labelTrainIds.png"
    mask = np.array([[0, 18, 255], [7, 13, 255]], dtype=np.uint8)
    Image.fromarray(mask).save(path)
    assert np.array_equal(read_mask(path, num_classes=19), mask)


def test_out_of_range_value_names_file_and_values(tmp_path: Path) -> None:
    path = _palette_png(tmp_path / "2007_000032.png", np.array([[0, 30, 21, 255]], np.uint8), [0, 0, 0])
    with pytest.raises(ValueError, match=r"2007_000032\.png.*\[21, 30\]"):
        read_mask(path, num_classes=21)


def test_colour_mask_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="rgb.png.*'RGB'"):
        read_mask(path, num_classes=21)


def test_classes_present_ignores_void() -> None:
    assert classes_present(INDICES) == {0, 1, 2, 3}
