"""One training step of supervised / mean-teacher / DDFP training, as pure computation.

train_step builds the losses (with graphs) and detached diagnostics; the caller owns optimisers,
backward, AMP, devices and the teacher update. No host-device sync happens here: diagnostics stay
tensors until the caller decides to log them.

Phases (the authors' schedule): supervised only before `sup_only_epochs`; then semi-supervised with the
flow fitted from `flow_start_epoch`; the perturbation branch from `perturb_start_epoch`.
`perturb.direction: random` and `perturb.eps: 0` are the controls of the density direction: the same
network, BN routing and loss weights.
`mean_teacher` is the same step without flow and perturbation, so ablations share one code path.
Its parts run in named torch.profiler ranges (`ddfp.encode`, `ddfp.search`, ...): `ddfp bench profile`
charges every millisecond of a step, backward included, to one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from ddfp.perturb import Perturbation, density_descending_delta, pixels_last, query_nll

DIAGNOSTICS_SEED = 0  # the diagnostics' own pixel subset; any fixed value keeps the training stream intact


@dataclass(frozen=True)
class Phase:
    semi: bool  # teacher pseudo-labels + CutMix + unlabelled loss
    fit_flow: bool  # train the density estimator (on the features flow.fit_on names)
    perturb: bool  # density-descending perturbation branch

    @staticmethod
    def at_epoch(epoch: int, cfg: MethodConfig) -> "Phase":
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


def _n_main(phase: Phase, cfg: MethodConfig, batch_size: int) -> int:
    """How many leading samples of the classifier batch use the main BN (the rest: aux BN).

    DDFP follows the authors: during the supervised epoch half the labelled batch warms the aux BN;
    during the flow warm-up the strong unlabelled half goes through the aux BN. Other methods never
    use the aux BN.
    """
    if cfg.train.method != "ddfp":
        return 2 * batch_size
    return batch_size // 2 if not phase.semi else batch_size


def supervised_step(student: DeepLabV3Plus, batch: Batch, phase: Phase, cfg: MethodConfig) -> StepOutput:
    with record_function("ddfp.encode"):
        v = student.encode(batch.img_x)
    with record_function("ddfp.classify"):
        logits, _ = student.classify(v, n_main=_n_main(phase, cfg, batch.img_x.shape[0]))
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


@dataclass
class FitData:
    """What the flow is fitted on: 2B feature maps [labelled ; unlabelled] and the unlabelled half's
    padding (IGNORE_INDEX) and pseudo-labels, all in the geometry of those features (mixed or not)."""

    feats: Tensor  # 2B x C x h x w, no graph
    ignore_u: Tensor  # B x H x W
    labels_u: Tensor  # B x H x W, IGNORE_INDEX where not confident (diagnostics only)


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
            return (*student.classify(v, n_main=_n_main(phase, cfg, b)), None)
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
            logs.update(_density_logs(models, fit, v[b:], confident, pert, cfg))
    if diagnostics and pert is not None:
        logs.update(_perturbation_logs(models.flow, pert, v[b:], feats[2 * b :], confident, cfg))
    return StepOutput(seg, flow_loss, logs)


def _diagnostic_subset(valid: Tensor, cfg: MethodConfig) -> tuple[Tensor, Tensor]:
    """num_samples of the valid pixels from a generator of its own, so that whether (and how often)
    diagnostics run never shifts the random stream that training draws from."""
    own = torch.Generator(device=valid.device).manual_seed(DIAGNOSTICS_SEED)
    return sample_pixels(valid, cfg.flow.num_samples, own)


@torch.no_grad()
def _density_logs(
    models: Models, fit: FitData, v_u: Tensor, confident: Tensor, pert: Perturbation | None, cfg: MethodConfig
) -> dict[str, Tensor]:
    """Mean mixture NLL of confident unlabelled pixels as fitted (nll_fit) and where the perturbation
    gradient is taken (nll_query): far apart, the density direction is read off the flow's tail.

    Before the perturbation starts nll_query runs the search's pass for the record: aux BN batch
    statistics and dropout, with the dropout draws on a forked RNG (no effect on training).
    """
    u = fit.feats[fit.labels_u.shape[0] :]
    fit_confident = (downsample_labels(fit.labels_u, u.shape[-2:]) != IGNORE_INDEX).reshape(-1)
    idx, weights = _diagnostic_subset(fit_confident, cfg)
    nll_fit = models.flow.nll(pixels_last(u)[idx], None, weights).nll
    if pert is not None:
        return {"nll_fit": nll_fit, "nll_query": pert.nll_query}
    devices = [] if v_u.device.type == "cpu" else [v_u.device]
    with torch.random.fork_rng(devices=devices, device_type=v_u.device.type):
        _, nll_query = query_nll(models.student, models.flow, models.student.first_conv(v_u), confident)
    return {"nll_fit": nll_fit, "nll_query": nll_query}


@torch.no_grad()
def _perturbation_logs(
    flow: DensityEstimator, pert: Perturbation, v_u: Tensor, feats_pt: Tensor, confident: Tensor, cfg: MethodConfig
) -> dict[str, Tensor]:
    """NLL of confident features after the perturbation, the mean |delta| where it applies and the mean
    per-pixel |V| of confident pixels (eps / v_norm is the relative size of the step).

    The after-NLL reuses the perturbed branch's features on a num_samples subset: a diagnostic should
    not cost another full flow pass.
    """
    flat = confident.reshape(-1)
    idx, weights = _diagnostic_subset(flat, cfg)
    after = flow.nll(pixels_last(feats_pt)[idx], None, weights).nll
    norms = pert.delta.float().norm(dim=1).reshape(-1)
    moved = flat if cfg.perturb.mask == "confident" else torch.ones_like(flat)
    delta_norm = (norms * moved).sum() / moved.sum().clamp_min(1)
    v_norm = (v_u.float().norm(dim=1).reshape(-1) * flat).sum() / flat.sum().clamp_min(1)
    return {"nll_after": after, "delta_norm": delta_norm, "v_norm": v_norm}


def train_step(models: Models, batch: Batch, phase: Phase, cfg: MethodConfig, diagnostics: bool = True) -> StepOutput:
    """Losses and diagnostics of one iteration (the student must be in train mode).

    diagnostics=False skips the density and perturbation diagnostics (extra flow passes, and a
    classifier pass in the flow's warm-up): the trainer asks for them only on the iterations it logs.
    """
    if not phase.semi:
        return supervised_step(models.student, batch, phase, cfg)
    return semi_step(models, batch, phase, cfg, diagnostics)


__all__ = ["Batch", "Models", "Phase", "StepOutput", "train_step"]
