"""One dataset class for every dataset (UniMatch-style): a root, a list of (image, mask) paths, a mode.

Split lists use UniMatch's format: one sample per line, image path and optional mask path relative to
the data root, separated by a space. Tensors are named as the trainer uses them: labelled ``img``/``mask``,
unlabelled ``img_w``/``img_s``/``ignore`` (and ``img_s2``, a second strong view, for methods that
read two: the same geometry, colour drawn again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ddfp.data.masks import read_mask
from ddfp.data.transforms import (
    mask_to_long,
    normalize,
    padding_mask,
    strong_photometric,
    train_geometry,
)

Mode = Literal["labeled", "unlabeled", "val"]
Key = int | tuple[int, int]


class SampleReadError(ValueError):
    """A listed image or mask does not decode; the message names the file (PIL's often does not)."""


def _unreadable(path: Path, err: Exception) -> SampleReadError:
    message = str(err) if str(path) in str(err) else f"{path}: cannot decode: {err}"
    return SampleReadError(message)


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed from (seed, index): neighbouring items get unrelated augmentations
    even when the caller passes one seed for a whole epoch."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SegDataset(Dataset):
    """Images (and masks) listed relative to ``root``; ``mode`` picks the augmentation and outputs.

    ``ds[i]`` draws augmentation randomness from the global torch RNG (per-worker seeded by the
    DataLoader). ``ds[(i, seed)]`` draws it from a private RNG seeded by (i, seed) only, so a sample
    is bit-identical whichever worker or position produces it (exact mid-epoch resume).
    """

    def __init__(
        self,
        root: Path,
        lines: list[tuple[str, str | None]],
        mode: Mode,
        crop_size: int,
        scale_range: tuple[float, float],
        num_classes: int,
        strong_views: int = 1,
    ) -> None:
        if mode not in ("labeled", "unlabeled", "val"):
            raise ValueError(f"mode must be 'labeled', 'unlabeled' or 'val', got {mode!r}")
        if mode != "unlabeled":
            missing = [img for img, mask in lines if mask is None]
            if missing:
                raise ValueError(f"{mode} samples need a mask path; none for {missing[:3]}")
        self.root = Path(root)
        self.lines = list(lines)
        self.mode = mode
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.num_classes = num_classes
        self.strong_views = strong_views
        self._strong = strong_photometric()

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):  # CPU RNG only: workers never touch accelerators
                torch.manual_seed(sample_seed(seed, index))
                return self._sample(index)
        return self._sample(key)

    def _image(self, index: int) -> tv_tensors.Image:
        path = self.root / self.lines[index][0]
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as err:  # a truncated JPEG raises OSError("Truncated File Read")
            raise _unreadable(path, err) from err
        return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))

    def _mask(self, index: int, image: tv_tensors.Image) -> tv_tensors.Mask:
        mask_path = self.root / str(self.lines[index][1])
        try:
            mask = read_mask(mask_path, self.num_classes)
        except (OSError, ValueError) as err:
            raise _unreadable(mask_path, err) from err
        if mask.shape != tuple(image.shape[-2:]):
            raise ValueError(f"{mask_path}: mask is {mask.shape}, its image {tuple(image.shape[-2:])}")
        return tv_tensors.Mask(torch.from_numpy(mask))

    def _sample(self, index: int) -> dict[str, Any]:
        image = self._image(index)
        if self.mode == "val":
            return {"img": normalize(image), "mask": mask_to_long(self._mask(index, image)),
                    "id": Path(self.lines[index][0]).stem}
        if self.mode == "labeled":
            image, mask = train_geometry(image, self._mask(index, image), self.crop_size, self.scale_range)
            return {"img": normalize(image), "mask": mask_to_long(mask)}
        ignore = padding_mask(*image.shape[-2:])
        image, ignore = train_geometry(image, ignore, self.crop_size, self.scale_range)
        views = {"img_s" if k == 0 else f"img_s{k + 1}": normalize(self._strong(image)) for k in range(self.strong_views)}
        return {"img_w": normalize(image), **views, "ignore": mask_to_long(ignore)}
