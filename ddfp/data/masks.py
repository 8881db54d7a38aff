"""Reading label masks as class indices, checked.

One reader for every format we accept: VOC palette PNGs (SegmentationClass), single-channel index
PNGs (SegmentationClassAug) and Cityscapes ``*_gtFine_labelTrainIds.png``. ``np.array(Image.open(p))``
returns the stored indices for all three; ``.convert("L")`` would turn palette indices into
luminance, i.e. wrong labels (as the authors' loader does), so it is never used here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ddfp.data.spec import IGNORE_INDEX

INDEX_MODES = ("P", "L", "I", "I;16")  # single-channel modes whose pixel values are class ids


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """HxW uint8 class ids in {0..num_classes-1, 255}; ValueError naming the file otherwise."""
    with Image.open(path) as image:
        if image.mode not in INDEX_MODES:
            raise ValueError(
                f"{path}: mask has mode {image.mode!r}; expected a single-channel index or palette PNG "
                f"(colour-coded masks must be converted to class ids first)"
            )
        mask = np.array(image)
    check_mask_values(mask, num_classes, path)
    return mask.astype(np.uint8, copy=False)


def check_mask_values(mask: np.ndarray, num_classes: int, source: str | Path) -> None:
    """Raise ValueError naming source and the offending values if any pixel is not a class id or 255."""
    if mask.size and (mask.min() < 0 or mask.max() > IGNORE_INDEX):
        raise ValueError(f"{source}: mask values outside 0..255 (min {mask.min()}, max {mask.max()})")
    # bincount over at most 256 bins: one pass, cheaper than np.unique's sort on large masks.
    present = np.flatnonzero(np.bincount(mask.ravel().astype(np.intp), minlength=IGNORE_INDEX + 1))
    bad = [int(v) for v in present if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        raise ValueError(
            f"{source}: mask values {bad} are not class ids 0..{num_classes - 1} or {IGNORE_INDEX} (ignore)"
        )


def classes_present(mask: np.ndarray) -> set[int]:
    """The class ids occurring in a mask, ignore excluded."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=IGNORE_INDEX + 1))
    return {int(v) for v in present if v != IGNORE_INDEX}


def voc_palette() -> list[int]:
    """The VOC colour map (768 ints): bits of the index spread over the high bits of R, G, B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette
