"""One CutMix box as Python ints, for tests that read a box's corners."""

import torch

from ddfp.data.mixing import cutmix_boxes


def cutmix_box(height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """One box as Python ints (y0, y1, x0, x1), half-open."""
    y0, y1, x0, x1 = cutmix_boxes(1, height, width, generator)[0].tolist()
    return y0, y1, x0, x1
