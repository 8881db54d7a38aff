"""Training geometry (rescale, pad, crop, flip), the strong view, normalisation, the padding mask."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from ddfp.data.spec import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from ddfp.data.transforms import (
    BLUR_KERNEL,
    BLUR_SIGMA,
    normalize,
    padding_mask,
    random_rescale,
    strong_photometric,
    train_geometry,
)


def _image(h: int, w: int) -> tv_tensors.Image:
    return tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))


def test_rescale_long_side_in_range_and_mask_nearest() -> None:
    torch.manual_seed(0)
    image = _image(40, 60)
    mask = tv_tensors.Mask(torch.randint(0, 5, (40, 60), dtype=torch.uint8))
    for _ in range(20):
        out, out_mask = random_rescale(image, mask, (0.5, 2.0))
        h, w = out.shape[-2:]
        assert 30 <= w <= 120 and h == int(40 * w / 60 + 0.5)
        assert out_mask.shape == (h, w)
        assert set(out_mask.unique().tolist()) <= set(range(5))  # nearest: no blended label values


def test_geometry_crop_shape_and_padding_is_ignore() -> None:
    torch.manual_seed(0)
    image = _image(24, 32)  # long side at most 32 * 1.5 = 48 < crop: always padded
    for _ in range(10):
        out, ignore = train_geometry(image, padding_mask(24, 32), crop_size=64, scale_range=(0.75, 1.5))
        assert out.shape == (3, 64, 64) and ignore.shape == (64, 64)
        valid = ignore == 0
        assert set(ignore.unique().tolist()) == {0, IGNORE_INDEX}
        assert (out[:, ~valid] == 0).all()  # image padding is 0
        # The valid region is one rectangle at the top (left or, after a flip, right).
        rows, cols = valid.any(1).nonzero().flatten(), valid.any(0).nonzero().flatten()
        assert rows[0] == 0 and valid.sum() == len(rows) * len(cols)


def test_geometry_larger_image_is_cropped_without_padding() -> None:
    torch.manual_seed(0)
    out, ignore = train_geometry(_image(100, 120), padding_mask(100, 120), crop_size=32, scale_range=(1.0, 1.0))
    assert out.shape == (3, 32, 32) and (ignore == 0).all()


def test_strong_view_keeps_shape_and_dtype() -> None:
    torch.manual_seed(0)
    strong = strong_photometric()
    image = _image(32, 32)
    outs = [strong(image) for _ in range(8)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(o, image) for o in outs)
    assert BLUR_KERNEL % 2 == 1 and BLUR_KERNEL >= 2 * 3 * BLUR_SIGMA[1] + 1


def test_normalize_uses_imagenet_statistics() -> None:
    image = tv_tensors.Image(torch.full((3, 4, 4), 255, dtype=torch.uint8))
    x = normalize(image)
    assert type(x) is torch.Tensor and x.dtype == torch.float32
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(x[:, 0, 0], expected)
