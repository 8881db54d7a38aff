"""Joint image/mask augmentations on transforms.v2: the authors' recipe (random rescale 0.5-2, crop,
flip; colour jitter, greyscale and blur on the strong view).

Images are uint8 ``tv_tensors.Image`` (3xHxW) until normalisation; masks are uint8 ``tv_tensors.Mask``
(HxW), which v2 resizes with nearest neighbour. All randomness comes from the global torch RNG, so a
caller that seeds it (``SegDataset`` under ``fork_rng``) gets the same sample back.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from ddfp.data.spec import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

BLUR_SIGMA = (0.1, 2.0)
# Odd kernel covering +-3 sigma of the largest sigma: 2 * ceil(3 * 2.0) + 1 = 13. A Gaussian truncated
# at 3 sigma keeps 99.7 % of its mass, so every sigma in BLUR_SIGMA is blurred essentially untruncated,
# close to the authors' PIL GaussianBlur(radius=sigma), which has no fixed kernel size.
BLUR_KERNEL = 13

Pair = tuple[tv_tensors.Image, tv_tensors.Mask]


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] inclusive (Python's random.randint), from the torch RNG."""
    return int(torch.randint(low, high + 1, ()).item())


def random_rescale(image: tv_tensors.Image, mask: tv_tensors.Mask, scale_range: tuple[float, float]) -> Pair:
    """Resize so the long side is a random integer in [lo, hi] x the original long side."""
    h, w = image.shape[-2:]
    long_side = _randint(int(max(h, w) * scale_range[0]), int(max(h, w) * scale_range[1]))
    if h > w:
        size = [long_side, int(w * long_side / h + 0.5)]
    else:
        size = [int(h * long_side / w + 0.5), long_side]
    image = F.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    mask = F.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST)
    return image, mask


def pad_and_crop(image: tv_tensors.Image, mask: tv_tensors.Mask, size: int) -> Pair:
    """Pad right/bottom up to size (image 0, mask ignore), then a random size x size crop."""
    h, w = image.shape[-2:]
    pad = [0, 0, max(size - w, 0), max(size - h, 0)]  # left, top, right, bottom
    image = F.pad(image, pad, fill=0)
    mask = F.pad(mask, pad, fill=IGNORE_INDEX)
    h, w = image.shape[-2:]
    top, left = _randint(0, h - size), _randint(0, w - size)
    return F.crop(image, top, left, size, size), F.crop(mask, top, left, size, size)


def random_hflip(image: tv_tensors.Image, mask: tv_tensors.Mask, p: float = 0.5) -> Pair:
    if torch.rand(()).item() < p:
        return F.horizontal_flip(image), F.horizontal_flip(mask)
    return image, mask


def train_geometry(
    image: tv_tensors.Image, mask: tv_tensors.Mask, crop_size: int, scale_range: tuple[float, float]
) -> Pair:
    """The authors' training geometry: rescale, pad + crop, horizontal flip (in this order)."""
    image, mask = random_rescale(image, mask, scale_range)
    image, mask = pad_and_crop(image, mask, crop_size)
    return random_hflip(image, mask)


def strong_photometric() -> v2.Compose:
    """The strong view's colour ops (UniMatch's img_s1 without CutMix); geometry is shared with the weak."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel_size=BLUR_KERNEL, sigma=BLUR_SIGMA)], p=0.5),
    ])


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 3xHxW -> float32 in ImageNet statistics (a plain tensor: tv_tensor wrappers end here)."""
    x = F.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True)
    return F.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def mask_to_long(mask: torch.Tensor) -> torch.Tensor:
    return mask.as_subclass(torch.Tensor).long()


def padding_mask(height: int, width: int) -> tv_tensors.Mask:
    """An all-zero mask of the image's size: after train_geometry it is 255 exactly on padded pixels.

    This is how unlabelled samples get their ignore mask without reading any label file (the authors read
    a mask for unlabelled images too, which fails where none exists).
    """
    return tv_tensors.Mask(torch.zeros((height, width), dtype=torch.uint8))
