"""U2PL's CutMix as DDFP uses it (authors' ``generate_unsup_data(..., mode="cutmix")``), batched.

With probability p per batch (one draw), every strong image i receives one box cut from image
(i + 1) mod B. Each image draws its own box, whose area is half the image: width uniform over the
integers in (W/2 + 1, W) (numpy ``randint(W/2 + 1, W)``), height round(H W / 2 / width), position
uniform. The pseudo-labels, their confidence and the ignore mask are mixed with the same boxes, all
from the unmixed batch (the authors build the mixed batch from the originals, not in place).

UniMatch's own boxes (``unimatch_boxes``: per image, with probability p, a box of 2-40 % of the area)
serve FixMatch and UniMatch, which mix every strong view with boxes of its own.

Boxes are drawn on the host from a CPU generator (the global torch RNG by default, so a checkpointed
RNG state reproduces them) and only ever copied to the device: no device-to-host synchronisation.
"""

from __future__ import annotations

import torch


def cutmix_boxes(batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """B x 4 int64 CPU tensor of (y0, y1, x0, x1) boxes, each of area H W / 2 up to rounding."""
    low = width // 2 + 1  # numpy's randint truncates the float bound W/2 + 1
    if low >= width:
        raise ValueError(f"CutMix needs an image at least 3 px wide, got width {width}")
    box_w = torch.randint(low, width, (batch,), generator=generator)  # high exclusive, as numpy's
    # torch.round rounds half to even, like np.round in the authors' code.
    box_h = torch.round(height * width / 2 / box_w.double()).long()
    y0 = (torch.rand(batch, generator=generator, dtype=torch.float64) * (height - box_h + 1)).long()
    x0 = (torch.rand(batch, generator=generator, dtype=torch.float64) * (width - box_w + 1)).long()
    return torch.stack([y0, y0 + box_h, x0, x0 + box_w], dim=1)


def unimatch_boxes(batch: int, size: int, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """UniMatch's per-image CutMix box (``obtain_cutmix_box``) for square size x size crops: B x 4 boxes
    (y0, y1, x0, x1), an empty one (0, 0, 0, 0) where the image is not mixed (probability 1 - p each).

    Area uniform in [0.02, 0.4] of the crop (drawn once), then aspect ratio uniform in [0.3, 1/0.3],
    width int(sqrt(area / ratio)), height int(sqrt(area x ratio)) and corner uniform over 0..size-1,
    redrawn until the box fits, as the released loop does. Drawn on the host (no device sync), from the
    global CPU RNG unless a generator is given.
    """
    boxes = torch.zeros(batch, 4, dtype=torch.long)
    for i in range(batch):
        if torch.rand((), generator=generator, dtype=torch.float64).item() > p:
            continue
        area = (0.02 + torch.rand((), generator=generator, dtype=torch.float64).item() * 0.38) * size * size
        while True:
            ratio = 0.3 + torch.rand((), generator=generator, dtype=torch.float64).item() * (1 / 0.3 - 0.3)
            w, h = int((area / ratio) ** 0.5), int((area * ratio) ** 0.5)
            x, y = (int(v) for v in torch.randint(0, size, (2,), generator=generator))
            if x + w <= size and y + h <= size:
                boxes[i] = torch.tensor([y, y + h, x, x + w])
                break
    return boxes


def box_masks(boxes: torch.Tensor, height: int, width: int, device: torch.device | str) -> torch.Tensor:
    """B x H x W bool, True inside each image's box (built by broadcasting, on device)."""
    boxes = boxes.to(device, non_blocking=True)
    ys = torch.arange(height, device=device)[None, :, None]
    xs = torch.arange(width, device=device)[None, None, :]
    y0, y1, x0, x1 = (boxes[:, i, None, None] for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def paste_from_next(x: torch.Tensor, inside: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
    """x[i] with its box region replaced by source[(i + 1) mod B] (source: x itself unless given, e.g.
    the mixing images' own pseudo-labels); x is B x ... x H x W."""
    shape = (inside.shape[0],) + (1,) * (x.dim() - 3) + tuple(inside.shape[1:])
    return torch.where(inside.view(shape), torch.roll(x if source is None else source, shifts=-1, dims=0), x)


def cutmix(boxes: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mix every tensor (images B x C x H x W, labels / confidence / ignore B x H x W) with the same boxes."""
    height, width = tensors[0].shape[-2:]
    inside = box_masks(boxes, height, width, tensors[0].device)
    return tuple(paste_from_next(t, inside) for t in tensors)


def maybe_cutmix(
    p: float, *tensors: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """With probability p (one draw per batch) CutMix all tensors; returns (tensors, boxes or None).

    The boxes are drawn only when mixing happens, as in the authors' loop. ``generator`` must be a
    CPU generator: reading a draw from a device generator would synchronise with the device.
    """
    if torch.rand((), generator=generator).item() >= p:
        return tensors, None
    batch, height, width = tensors[0].shape[0], *tensors[0].shape[-2:]
    boxes = cutmix_boxes(batch, height, width, generator)
    return cutmix(boxes, *tensors), boxes
