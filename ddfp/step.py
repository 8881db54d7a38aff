"""One training step of supervised / mean-teacher / DDFP training, as pure computation.

train_step builds the losses (with graphs) and detached diagnostics; the caller owns optimisers,
backward, AMP, devices and the teacher update. No host-device sync happens here: diagnostics stay
tensors until the caller decides to log them.

Phases (the authors' schedule): supervised only before `sup_only_epochs`; then semi-supervised with the
flow fitted from `flow_start_epoch`; the perturbation branch from `perturb_start_epoch`.
`mean_teacher` is the same step without flow and perturbation, so ablations share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddfp.config import Config
from ddfp.data.mixing import maybe_cutmix
from ddfp.data.spec import IGNORE_INDEX
from ddfp.flow import DensityEstimator, sample_pixels
from ddfp.flow.prior import UNLABELLED
from ddfp.losses import downsample_labels, masked_ce, pseudo_labels
from ddfp.model import DeepLabV3Plus
from ddfp.model.deeplab import upsample
from ddfp.perturb import density_descending_delta, pixels_last


DIAGNOSTICS_SEED = 0  # the diagnostics' own pixel subset; any fixed value keeps the training stream intact


@dataclass(frozen=True)
class Phase:
    semi: bool  # teacher pseudo-labels + CutMix + unlabelled loss
    fit_flow: bool  # train the density estimator on teacher features
    perturb: bool  # density-descending perturbation branch

    @staticmethod
    def at_epoch(epoch: int, cfg: Config) -> "Phase":
        t, method = cfg.train, cfg.train.method
        semi = method != "supervised" and epoch >= t.sup_only_epochs
        ddfp = method == "ddfp"
        return Phase(semi, ddfp and epoch >= t.flow_start_epoch, ddfp and epoch >= t.perturb_start_epoch)


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


@dataclass
class StepOutput:
    seg_loss: Tensor  # weighted total of the segmentation net
    flow_loss: Tensor | None  # flow NLL, None when the flow is not fitted this step
    logs: dict[str, Tensor] = field(default_factory=dict)  # detached scalars


def _n_main(phase: Phase, cfg: Config, batch_size: int) -> int:
    """How many leading samples of the classifier batch use the main BN (the rest: aux BN).

    DDFP follows the authors: during the supervised epoch half the labelled batch warms the aux BN;
    during the flow warm-up the strong unlabelled half goes through the aux BN. Other methods never
    use the aux BN.
    """
    if cfg.train.method != "ddfp":
        return 2 * batch_size
    return batch_size // 2 if not phase.semi else batch_size


def supervised_step(student: DeepLabV3Plus, batch: Batch, phase: Phase, cfg: Config) -> StepOutput:
    out = student(batch.img_x, n_main=_n_main(phase, cfg, batch.img_x.shape[0]))
    loss_sup = masked_ce(out.logits, batch.mask_x)
    return StepOutput(cfg.loss.sup * loss_sup, None, {"loss_sup": loss_sup.detach()})


def teacher_predict(teacher: DeepLabV3Plus, batch: Batch, cfg: Config) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher on [labelled ; weak unlabelled] -> (pseudo-labels, confidence, clean features)."""
    teacher.train(cfg.teacher.pseudo_label_mode == "train")
    with torch.no_grad():
        out = teacher(torch.cat([batch.img_x, batch.img_u_w]))
    b = batch.img_x.shape[0]
    labels, conf = pseudo_labels(out.logits[b:], cfg.train.conf_thresh, batch.ignore_u)
    return labels, conf, out.feats


def flow_step(flow: DensityEstimator, feats: Tensor, batch: Batch, cfg: Config) -> tuple[Tensor, Tensor]:
    """Fit data for the flow: labelled pixels class-conditionally, unpadded unlabelled pixels under
    the mixture (as the authors do: the confidence threshold
    does not apply to the flow's data), num_samples of them at random."""
    size = feats.shape[-2:]
    lab_x = downsample_labels(batch.mask_x, size)
    pad_u = downsample_labels(batch.ignore_u, size) == IGNORE_INDEX
    lab_u = torch.full_like(pad_u, UNLABELLED, dtype=torch.long).masked_fill(pad_u, IGNORE_INDEX)
    labels = torch.cat([lab_x, lab_u]).reshape(-1)
    idx, weights = sample_pixels(labels != IGNORE_INDEX, cfg.flow.num_samples)
    x = pixels_last(feats)[idx].float()
    x = x + cfg.flow.input_noise * torch.randn_like(x)
    # Picks beyond the valid count carry weight 0; give them a label the prior can index.
    picked = labels[idx].masked_fill(weights == 0, UNLABELLED)
    fit = flow.nll(x, picked, weights)
    return fit.nll, fit.bits_per_dim


def semi_step(models: Models, batch: Batch, phase: Phase, cfg: Config, diagnostics: bool = True) -> StepOutput:
    b = batch.img_x.shape[0]
    labels_u, conf, t_feats = teacher_predict(models.teacher, batch, cfg)
    (img_s, labels_u), _ = maybe_cutmix(cfg.train.cutmix_prob, batch.img_u_s, labels_u)
    student = models.student
    v = student.encode(torch.cat([batch.img_x, img_s]))
    logs: dict[str, Tensor] = {"confident_ratio": (labels_u != IGNORE_INDEX).float().mean()}
    if phase.perturb:
        confident = downsample_labels(labels_u, v.shape[-2:]) != IGNORE_INDEX
        pert = density_descending_delta(student, models.flow, v[b:], confident, cfg.perturb.eps, cfg.perturb.mask)
        logits, feats = student.classify(torch.cat([v, v[b:] + pert.delta]), n_main=2 * b)
        if diagnostics:
            logs.update(_perturbation_logs(models.flow, pert, v[b:], feats[2 * b :], confident, cfg))
    else:
        logits, feats = student.classify(v, n_main=_n_main(phase, cfg, b))
    logits = upsample(logits, batch.img_x.shape[-2:])
    loss_sup = masked_ce(logits[:b], batch.mask_x)
    loss_u = masked_ce(logits[b : 2 * b], labels_u)
    logs.update(loss_sup=loss_sup.detach(), loss_unsup=loss_u.detach())
    if phase.perturb:
        loss_pt = masked_ce(logits[2 * b :], labels_u)
        logs["loss_perturb"] = loss_pt.detach()
        seg = cfg.loss.sup * loss_sup + cfg.loss.unsup * loss_u + cfg.loss.perturb * loss_pt
    else:
        seg = cfg.loss.sup * loss_sup + cfg.loss.warmup_unsup * loss_u
    flow_loss = None
    if phase.fit_flow:
        flow_loss, bpd = flow_step(models.flow, t_feats, batch, cfg)
        logs["flow_bpd"] = bpd.detach()
    return StepOutput(seg, flow_loss, logs)


@torch.no_grad()
def _perturbation_logs(
    flow: DensityEstimator, pert, v_u: Tensor, feats_pt: Tensor, confident: Tensor, cfg: Config
) -> dict[str, Tensor]:
    """NLL of confident features before/after the perturbation, the mean |delta| where it applies and
    the mean per-pixel |V| of confident pixels (eps / v_norm is the relative size of the step).

    The after-NLL reuses the perturbed branch's features on a num_samples subset: a diagnostic should
    not cost another full flow pass. The subset comes from a generator of its own, so whether (and how
    often) diagnostics run never shifts the random stream that training draws from.
    """
    flat = confident.reshape(-1)
    own = torch.Generator(device=flat.device).manual_seed(DIAGNOSTICS_SEED)
    idx, weights = sample_pixels(flat, cfg.flow.num_samples, own)
    after = flow.nll(pixels_last(feats_pt)[idx], None, weights).nll
    norms = pert.delta.float().norm(dim=1).reshape(-1)
    moved = flat if cfg.perturb.mask == "confident" else torch.ones_like(flat)
    delta_norm = (norms * moved).sum() / moved.sum().clamp_min(1)
    v_norm = (v_u.float().norm(dim=1).reshape(-1) * flat).sum() / flat.sum().clamp_min(1)
    return {"nll_before": pert.nll_before.detach(), "nll_after": after, "delta_norm": delta_norm, "v_norm": v_norm}


def train_step(models: Models, batch: Batch, phase: Phase, cfg: Config, diagnostics: bool = True) -> StepOutput:
    """Losses and diagnostics of one iteration (the student must be in train mode).

    diagnostics=False skips the perturbation diagnostics (an extra flow pass over the perturbed
    features): the trainer asks for them only on the iterations it logs.
    """
    if not phase.semi:
        return supervised_step(models.student, batch, phase, cfg)
    return semi_step(models, batch, phase, cfg, diagnostics)


__all__ = ["Batch", "Models", "Phase", "StepOutput", "train_step"]
