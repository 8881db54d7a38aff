"""Cross-entropy with explicit valid-pixel normalisation, and pseudo-labels by confidence."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ddfp.data.spec import IGNORE_INDEX


def masked_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Mean CE over pixels whose target is not IGNORE_INDEX; exactly 0 (not NaN) when none is.

    Dividing by max(count, 1) instead of reduction='mean' is what keeps an all-ignored batch (no
    confident pseudo-label) finite; the count stays a tensor, so there is no host sync.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (target != IGNORE_INDEX).sum().clamp_min(1)
    return total / count


def pseudo_labels(logits: Tensor, thresh: float, ignore: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Teacher logits -> (labels with IGNORE_INDEX where confidence <= thresh or padded, confidence).

    A pixel is kept only when its confidence is strictly above the threshold (the authors' `le`).
    """
    conf, label = logits.float().softmax(dim=1).max(dim=1)
    drop = conf <= thresh
    if ignore is not None:
        drop = drop | (ignore == IGNORE_INDEX)
    return label.masked_fill(drop, IGNORE_INDEX), conf


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour label map at feature resolution (stride 4), as the authors do."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
