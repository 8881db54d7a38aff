"""Weak-to-strong self-training without a teacher: FixMatch and UniMatch as UniMatch's released
`fixmatch.py` and `unimatch.py` train them, as pure computation.

The training network pseudo-labels its own weak views (the prediction of the same train-mode forward
as the labelled images, detached). Every strong view is CutMixed with a box of its own (UniMatch's
per-image boxes) from the next image of the batch, and the pasted region takes the pseudo-labels of
that image's own eval-mode weak prediction. The unlabelled losses count pixels whose confidence is at
least the threshold and divide by every unpadded pixel, as the released code does. UniMatch adds its
feature perturbation: Dropout2d(0.5) on the backbone's low- and high-level features of the weak batch,
decoded a second time in the same decoder batch. Loss: (L_x + strong * mean_k L_s_k + fp * L_fp) / 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from ddfp.config import MethodConfig
from ddfp.data.mixing import box_masks, paste_from_next, unimatch_boxes
from ddfp.data.spec import IGNORE_INDEX
from ddfp.losses import masked_ce
from ddfp.model.deeplab import DeepLabV3Plus, upsample
from ddfp.perturb import FEATURE_DROPOUT
from ddfp.step import Batch, Models, Phase, StepOutput


@dataclass(frozen=True)
class WeakToStrong:
    """A weak-to-strong method's strong views and released loss weights:
    (L_x + strong * mean_k L_s_k + fp * L_fp) / 2."""

    views: int  # strong views of each unlabelled image
    strong: float
    fp: float  # 0: no feature-perturbation branch


FIXMATCH = WeakToStrong(views=1, strong=1.0, fp=0.0)
UNIMATCH = WeakToStrong(views=2, strong=0.5, fp=0.5)  # 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp, then / 2


@dataclass
class Targets:
    """Pseudo-labels of a B x H x W view: class, confidence and padding (IGNORE_INDEX)."""

    labels: Tensor
    conf: Tensor
    ignore: Tensor

    def pasted(self, inside: Tensor, mix: "Targets") -> "Targets":
        """These targets with each box region taken from the next image's own (`mix`)."""
        return Targets(*(paste_from_next(a, inside, b) for a, b in
                         ((self.labels, mix.labels), (self.conf, mix.conf), (self.ignore, mix.ignore))))


def targets(logits: Tensor, ignore: Tensor) -> Targets:
    conf, labels = logits.detach().float().softmax(dim=1).max(dim=1)
    return Targets(labels, conf, ignore)


def thresholded_ce(logits: Tensor, t: Targets, thresh: float) -> Tensor:
    """CE of the pixels whose confidence is at least `thresh`, summed and divided by the number of
    unpadded pixels (not of confident ones): the released normalisation, which lets the loss shrink
    while few pixels pass. Exactly 0 when nothing is unpadded."""
    ce = F.cross_entropy(logits.float(), t.labels, reduction="none")
    valid = t.ignore != IGNORE_INDEX
    keep = (t.conf >= thresh) & valid
    return (ce * keep).sum() / valid.sum().clamp_min(1)


def mixing_targets(student: DeepLabV3Plus, batch: Batch) -> Targets:
    """The mixing images' own pseudo-labels: the training network in eval mode on their weak views,
    as the released code predicts the images of its second loader (here: the batch itself)."""
    student.eval()
    try:
        with torch.no_grad():
            return targets(student(batch.img_u_w).logits, batch.ignore_u)
    finally:
        student.train()


def weak_strong_step(models: Models, batch: Batch, phase: Phase, cfg: MethodConfig, diagnostics: bool = True, *,
                     weights: WeakToStrong) -> StepOutput:
    """One iteration of FixMatch (one strong view, fp 0) or UniMatch (two strong views, fp > 0)."""
    student, b, size = models.student, batch.img_x.shape[0], batch.img_x.shape[-2:]
    if len(batch.strong) < weights.views:
        raise ValueError(f"the step needs {weights.views} strong views per image, the batch has {len(batch.strong)}")
    with record_function("ddfp.teacher"):
        mix = mixing_targets(student, batch)
        strong, boxes = [], []
        for view in batch.strong[: weights.views]:
            inside = box_masks(unimatch_boxes(b, view.shape[-1], generator=None), *view.shape[-2:], view.device)
            strong.append(paste_from_next(view, inside))
            boxes.append(inside)
    with record_function("ddfp.encode"):
        low, high = student.backbone(torch.cat([batch.img_x, batch.img_u_w]))
        if weights.fp:
            low = torch.cat([low, F.dropout2d(low, FEATURE_DROPOUT, training=True)])
            high = torch.cat([high, F.dropout2d(high, FEATURE_DROPOUT, training=True)])
        v = student.decode(low, high)
    with record_function("ddfp.classify"):
        logits = upsample(student.classify(v)[0], size)
        strong_logits = student(torch.cat(strong)).logits.chunk(len(strong))
    with record_function("ddfp.loss"):
        weak = targets(logits[b : 2 * b], batch.ignore_u)
        loss_x = masked_ce(logits[:b], batch.mask_x)
        losses_s = [thresholded_ce(out, weak.pasted(inside, mix), cfg.train.conf_thresh)
                    for out, inside in zip(strong_logits, boxes)]
        loss_s = torch.stack(losses_s).mean()
        total = loss_x + weights.strong * loss_s
        logs = {"loss_sup": loss_x.detach(), "loss_unsup": loss_s.detach()}
        if weights.fp:
            loss_fp = thresholded_ce(logits[3 * b :], weak, cfg.train.conf_thresh)
            total = total + weights.fp * loss_fp
            logs["loss_perturb"] = loss_fp.detach()
    confident = (weak.conf >= cfg.train.conf_thresh) & (weak.ignore != IGNORE_INDEX)
    logs["confident_ratio"] = confident.float().mean()
    return StepOutput(total / 2, None, logs)


__all__ = ["FIXMATCH", "UNIMATCH", "WeakToStrong", "thresholded_ce", "weak_strong_step"]
