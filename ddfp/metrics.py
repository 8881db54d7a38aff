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


# What pseudo_label_counts returns, in order: integer counts that add up over batches, so the quality
# of a whole image list is the quality of its summed counts (not a mean of per-batch ratios).
PSEUDO_LABEL_COUNTS = ("valid", "confident", "correct", "foreground", "foreground_confident", "background_confident")


def pseudo_label_counts(probs: Tensor, gt: Tensor, thresh: float, background: int | None = 0) -> Tensor:
    """Pixel counts (PSEUDO_LABEL_COUNTS order) of the pseudo-labels that probs (B x C x H x W) give
    against the ground truth gt (B x H x W; IGNORE_INDEX pixels count nowhere).

    A pixel is confident when its top probability is strictly above thresh, as in training.
    background: the background class index, or None when the dataset has none (every valid pixel is
    then foreground)."""
    conf, label = probs.float().max(dim=1)
    valid = gt != IGNORE_INDEX
    confident = valid & (conf > thresh)
    foreground = valid if background is None else valid & (gt != background)
    predicted_bg = torch.zeros_like(confident) if background is None else label == background
    counts = (valid, confident, confident & (label == gt), foreground, foreground & confident,
              confident & predicted_bg)
    return torch.stack([c.sum() for c in counts]).long()


def pseudo_label_quality(counts: Tensor) -> dict[str, float]:
    """Counts -> confident share (of valid pixels), precision (of the confident ones), foreground
    coverage (share of foreground pixels with a confident pseudo-label, right or wrong) and the
    background share of the confident pixels (how much of the unlabelled loss teaches background).
    A ratio over zero pixels is NaN."""
    n = dict(zip(PSEUDO_LABEL_COUNTS, counts.tolist()))

    def ratio(num: str, den: str) -> float:
        return n[num] / n[den] if n[den] else float("nan")

    return {"confident_share": ratio("confident", "valid"), "precision": ratio("correct", "confident"),
            "fg_coverage": ratio("foreground_confident", "foreground"),
            "bg_share": ratio("background_confident", "confident")}
