"""Confusion matrix -> per-class IoU and mIoU, accumulated over a dataset (intersection and union
summed over all images, then averaged over classes, as the authors do)."""

from __future__ import annotations

import torch
from torch import Tensor

from ddfp.data.spec import IGNORE_INDEX


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """C x C int64 counts, rows = ground truth, columns = prediction; IGNORE_INDEX pixels skipped."""
    valid = target != IGNORE_INDEX
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: Tensor) -> Tensor:
    """IoU_c = TP / (TP + FP + FN); NaN for a class absent from both prediction and ground truth."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(cm: Tensor) -> float:
    """Mean over classes that occur (prediction or ground truth), in percent."""
    return float(torch.nanmean(iou_per_class(cm)) * 100)
