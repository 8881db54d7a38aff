"""The step's data (Phase, Models, Batch, StepOutput), the supervised step every method starts with,
and the semi-supervised step of mean teacher and DDFP, as pure computation.

A step builds the losses (with graphs) and detached diagnostics; the caller owns optimisers,
backward, AMP, devices and the teacher update (ddfp.methods.train_step picks the method's step). No host-device sync happens here: diagnostics stay
tensors until the caller decides to log them.

Phases (the authors' schedule): supervised only before `sup_only_epochs`; then semi-supervised with the
flow fitted from `flow_start_epoch`; the perturbation branch from `perturb_start_epoch`.
`perturb.direction: random` and `perturb.eps: 0` are the controls of the density direction: the same
network, BN routing and loss weights.
Mean teacher is the same step without flow and perturbation, so ablations share one code path.
Its parts run in named torch.profiler ranges (`ddfp.encode`, `ddfp.search`, ...): `ddfp bench profile`
charges every millisecond of a step, backward included, to one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor
from torch.profiler import record_function

from ddfp.config import MethodConfig
from ddfp.data.mixing import maybe_cutmix
from ddfp.data.spec import IGNORE_INDEX
from ddfp.flow.density import DensityEstimator, sample_pixels
from ddfp.flow.prior import UNLABELLED
from ddfp.losses import downsample_labels, masked_ce, pseudo_labels
from ddfp.model.deeplab import DeepLabV3Plus, upsample
from ddfp.diagnostics import FitData, density_logs, perturbation_logs
from ddfp.perturb import Perturbation, density_descending_delta, pixels_last

@dataclass(frozen=True)
class Phase:
    """What one iteration does, from the method's row of ddfp.methods.METHODS and the epoch
    (ddfp.methods.phase_at): the step functions read these flags, never the method's name."""

    semi: bool  # pseudo-labels + CutMix + unlabelled loss
    fit_flow: bool = False  # train the density estimator (on the features flow.fit_on names)
    perturb: bool = False  # the feature-perturbation branch
    aux_bn: bool = False  # the classifier's auxiliary BN serves the perturbed rows (and warms up before)
    ema_teacher: bool = False  # an EMA teacher pseudo-labels (handed off, updated and evaluated)


@dataclass
class Models:
    student: DeepLabV3Plus
    teacher: DeepLabV3Plus
    flow: DensityEstimator


@dataclass
class Batch:
    img_x: Tensor  # B x 3 x H x W labelled
    mask_x: Tensor  # B x H x W
    img_u_w: Tensor  # B x 3 x H x W unlabelled, weak view
    img_u_s: Tensor  # B x 3 x H x W unlabelled, strong view (same geometry)
    ignore_u: Tensor  # B x H x W, IGNORE_INDEX on padding
    img_u_s2: Tensor | None = None  # a second strong view (its own colour draws), for methods that read two

    @classmethod
    def from_samples(cls, labelled: Mapping[str, Tensor], unlabelled: Mapping[str, Tensor],
                     images: Callable[[Tensor], Tensor], labels: Callable[[Tensor], Tensor]) -> "Batch":
        """The one mapping from the dataset's keys (ddfp.data.dataset) to the step's fields; `images`
        and `labels` move image and label tensors to where the step runs."""
        s2 = unlabelled.get("img_s2")
        return cls(images(labelled["img"]), labels(labelled["mask"]), images(unlabelled["img_w"]),
                   images(unlabelled["img_s"]), labels(unlabelled["ignore"]), None if s2 is None else images(s2))

    @property
    def strong(self) -> tuple[Tensor, ...]:
        return (self.img_u_s,) if self.img_u_s2 is None else (self.img_u_s, self.img_u_s2)


@dataclass
class StepOutput:
    seg_loss: Tensor  # weighted total of the segmentation net
    flow_loss: Tensor | None  # flow NLL, None when the flow is not fitted this step
    logs: dict[str, Tensor] = field(default_factory=dict)  # detached scalars


def _n_main(phase: Phase, batch_size: int) -> int:
    """How many leading samples of the classifier batch use the main BN (the rest: aux BN).

    With the aux BN (DDFP) as the authors do: during the supervised epoch half the labelled batch
    warms the aux BN; during the flow warm-up the strong unlabelled half goes through the aux BN.
    Methods without it never use the aux BN.
    """
    if not phase.aux_bn:
        return 2 * batch_size
    return batch_size // 2 if not phase.semi else batch_size


def supervised_step(student: DeepLabV3Plus, batch: Batch, phase: Phase, cfg: MethodConfig) -> StepOutput:
    with record_function("ddfp.encode"):
        v = student.encode(batch.img_x)
    with record_function("ddfp.classify"):
        logits, _ = student.classify(v, n_main=_n_main(phase, batch.img_x.shape[0]))
    with record_function("ddfp.loss"):
        loss_sup = masked_ce(upsample(logits, batch.img_x.shape[-2:]), batch.mask_x)
    return StepOutput(cfg.loss.sup * loss_sup, None, {"loss_sup": loss_sup.detach()})


def teacher_predict(teacher: DeepLabV3Plus, batch: Batch, cfg: MethodConfig) -> tuple[Tensor, Tensor]:
    """Teacher on [labelled ; weak unlabelled] -> (pseudo-labels of the unlabelled half, clean features)."""
    teacher.train(cfg.teacher.pseudo_label_mode == "train")
    with torch.no_grad():
        out = teacher(torch.cat([batch.img_x, batch.img_u_w]))
    b = batch.img_x.shape[0]
    labels, _ = pseudo_labels(out.logits[b:], cfg.train.conf_thresh, batch.ignore_u)
    return labels, out.feats


def flow_step(
    flow: DensityEstimator, feats: Tensor, mask_x: Tensor, ignore_u: Tensor, cfg: MethodConfig
) -> tuple[Tensor, Tensor]:
    """Fit data for the flow: labelled pixels class-conditionally, unpadded unlabelled pixels under
    the mixture (as the authors do: the confidence threshold
    does not apply to the flow's data), num_samples of them at random."""
    size = feats.shape[-2:]
    lab_x = downsample_labels(mask_x, size)
    pad_u = downsample_labels(ignore_u, size) == IGNORE_INDEX
    lab_u = torch.full_like(pad_u, UNLABELLED, dtype=torch.long).masked_fill(pad_u, IGNORE_INDEX)
    labels = torch.cat([lab_x, lab_u]).reshape(-1)
    idx, weights = sample_pixels(labels != IGNORE_INDEX, cfg.flow.num_samples)
    x = pixels_last(feats)[idx].float()
    x = x + cfg.flow.input_noise * torch.randn_like(x)
    # Picks beyond the valid count carry weight 0; give them a label the prior can index.
    picked = labels[idx].masked_fill(weights == 0, UNLABELLED)
    fit = flow.nll(x, picked, weights)
    return fit.nll, fit.bits_per_dim


def _segmentation_loss(
    logits: Tensor, batch: Batch, labels_u: Tensor, phase: Phase, cfg: MethodConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted CE of the segmentation net: L_sup + warmup_unsup L_u, or L_sup + unsup L_u + perturb L_pt."""
    b = batch.img_x.shape[0]
    logits = upsample(logits, batch.img_x.shape[-2:])
    loss_sup = masked_ce(logits[:b], batch.mask_x)
    loss_u = masked_ce(logits[b : 2 * b], labels_u)
    logs = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_u.detach()}
    if not phase.perturb:
        return cfg.loss.sup * loss_sup + cfg.loss.warmup_unsup * loss_u, logs
    loss_pt = masked_ce(logits[2 * b :], labels_u)
    logs["loss_perturb"] = loss_pt.detach()
    return cfg.loss.sup * loss_sup + cfg.loss.unsup * loss_u + cfg.loss.perturb * loss_pt, logs


def _classify(models: Models, v: Tensor, confident: Tensor, phase: Phase,
              cfg: MethodConfig) -> tuple[Tensor, Tensor, Perturbation | None]:
    """The student's classifier on V = [labelled ; unlabelled]: (logits, features, perturbation). With
    the perturbation the unlabelled rows come a second time, shifted by delta, through the aux BN."""
    student, b = models.student, v.shape[0] // 2
    if not phase.perturb:
        with record_function("ddfp.classify"):
            return (*student.classify(v, n_main=_n_main(phase, b)), None)
    # The clean pass's first conv serves the search (which needs conv1 of the unlabelled V) and the
    # perturbed rows (conv1(V + delta) = conv1(V) + conv1 of delta without bias), so the unlabelled V
    # is convolved once, not three times. The perturbed rows keep V's graph.
    p = cfg.perturb
    with record_function("ddfp.classify"):
        h = student.first_conv(v)
    with record_function("ddfp.search"):
        pert = density_descending_delta(student, models.flow, v[b:], confident, p.eps, p.mask, p.direction, h[b:])
    with record_function("ddfp.classify"):
        return (*student.classify_from(torch.cat([h, student.shift(h[b:], pert.delta)]), n_main=2 * b), pert)


def semi_step(models: Models, batch: Batch, phase: Phase, cfg: MethodConfig, diagnostics: bool = True) -> StepOutput:
    b = batch.img_x.shape[0]
    with record_function("ddfp.teacher"):
        labels_w, t_feats = teacher_predict(models.teacher, batch, cfg)
        # The padding mask takes the same boxes: the student's fit data must drop the padding pasted in.
        (img_s, labels_u, ignore_s), _ = maybe_cutmix(cfg.train.cutmix_prob, batch.img_u_s, labels_w, batch.ignore_u)
    with record_function("ddfp.encode"):
        v = models.student.encode(torch.cat([batch.img_x, img_s]))
    confident = downsample_labels(labels_u, v.shape[-2:]) != IGNORE_INDEX
    logits, feats, pert = _classify(models, v, confident, phase, cfg)
    with record_function("ddfp.loss"):
        seg, logs = _segmentation_loss(logits, batch, labels_u, phase, cfg)
    logs["confident_ratio"] = (labels_u != IGNORE_INDEX).float().mean()
    flow_loss = None
    if phase.fit_flow:
        # fit_on student: all 2B rows of the main pass as they are (dropout on, batch statistics). The
        # authors' teacher had the student's weights (aliased) and ran in train mode, so they fitted
        # the student's train-mode features, which is what the search queries; an eval-mode EMA
        # teacher's features put the search far in the tail of the fitted density. In the warm-up
        # epoch the unlabelled rows went through the aux BN, as the search does; the labelled rows
        # always use the main BN.
        if cfg.flow.fit_on == "student":
            fit = FitData(feats[: 2 * b].detach(), ignore_s, labels_u)
        else:
            fit = FitData(t_feats, batch.ignore_u, labels_w)
        with record_function("ddfp.flow_fit"):
            flow_loss, bpd = flow_step(models.flow, fit.feats, batch.mask_x, fit.ignore_u, cfg)
        logs["flow_bpd"] = bpd.detach()
        if diagnostics:
            logs.update(density_logs(models.student, models.flow, fit, v[b:], confident, pert, cfg))
    if diagnostics and pert is not None:
        logs.update(perturbation_logs(models.flow, pert, v[b:], feats[2 * b :], confident, cfg))
    return StepOutput(seg, flow_loss, logs)


__all__ = ["Batch", "FitData", "Models", "Phase", "StepOutput", "flow_step", "semi_step", "supervised_step"]
