"""Diagnostics of the mean-teacher / DDFP step: the flow's density where it is fitted, where the
perturbation's gradient is taken and after the perturbation, and the perturbation's size. Detached
and computed on a pixel subset of their own, so asking for them never changes what is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddfp.config import MethodConfig
from ddfp.data.spec import IGNORE_INDEX
from ddfp.flow.density import DensityEstimator, sample_pixels
from ddfp.losses import downsample_labels
from ddfp.model.deeplab import DeepLabV3Plus
from ddfp.perturb import Perturbation, pixels_last, query_nll

DIAGNOSTICS_SEED = 0  # the diagnostics' own pixel subset; any fixed value keeps the training stream intact


@dataclass
class FitData:
    """What the flow is fitted on: 2B feature maps [labelled ; unlabelled] and the unlabelled half's
    padding (IGNORE_INDEX) and pseudo-labels, all in the geometry of those features (mixed or not)."""

    feats: Tensor  # 2B x C x h x w, no graph
    ignore_u: Tensor  # B x H x W
    labels_u: Tensor  # B x H x W, IGNORE_INDEX where not confident (diagnostics only)


def diagnostic_subset(valid: Tensor, cfg: MethodConfig) -> tuple[Tensor, Tensor]:
    """num_samples of the valid pixels from a generator of its own, so that whether (and how often)
    diagnostics run never shifts the random stream that training draws from."""
    own = torch.Generator(device=valid.device).manual_seed(DIAGNOSTICS_SEED)
    return sample_pixels(valid, cfg.flow.num_samples, own)


@torch.no_grad()
def density_logs(
    student: DeepLabV3Plus, flow: DensityEstimator, fit: FitData, v_u: Tensor, confident: Tensor, pert: Perturbation | None, cfg: MethodConfig
) -> dict[str, Tensor]:
    """Mean mixture NLL of confident unlabelled pixels as fitted (nll_fit) and where the perturbation
    gradient is taken (nll_query): far apart, the density direction is read off the flow's tail.

    Before the perturbation starts nll_query runs the search's pass for the record: aux BN batch
    statistics and dropout, with the dropout draws on a forked RNG (no effect on training).
    """
    u = fit.feats[fit.labels_u.shape[0] :]
    fit_confident = (downsample_labels(fit.labels_u, u.shape[-2:]) != IGNORE_INDEX).reshape(-1)
    idx, weights = diagnostic_subset(fit_confident, cfg)
    nll_fit = flow.nll(pixels_last(u)[idx], None, weights).nll
    if pert is not None:
        return {"nll_fit": nll_fit, "nll_query": pert.nll_query}
    devices = [] if v_u.device.type == "cpu" else [v_u.device]
    with torch.random.fork_rng(devices=devices, device_type=v_u.device.type):
        _, nll_query = query_nll(student, flow, student.first_conv(v_u), confident)
    return {"nll_fit": nll_fit, "nll_query": nll_query}


@torch.no_grad()
def perturbation_logs(
    flow: DensityEstimator, pert: Perturbation, v_u: Tensor, feats_pt: Tensor, confident: Tensor, cfg: MethodConfig
) -> dict[str, Tensor]:
    """NLL of confident features after the perturbation, the mean |delta| where it applies and the mean
    per-pixel |V| of confident pixels (eps / v_norm is the relative size of the step).

    The after-NLL reuses the perturbed branch's features on a num_samples subset: a diagnostic should
    not cost another full flow pass.
    """
    flat = confident.reshape(-1)
    idx, weights = diagnostic_subset(flat, cfg)
    after = flow.nll(pixels_last(feats_pt)[idx], None, weights).nll
    norms = pert.delta.float().norm(dim=1).reshape(-1)
    moved = flat if cfg.perturb.mask == "confident" else torch.ones_like(flat)
    delta_norm = (norms * moved).sum() / moved.sum().clamp_min(1)
    v_norm = (v_u.float().norm(dim=1).reshape(-1) * flat).sum() / flat.sum().clamp_min(1)
    return {"nll_after": after, "delta_norm": delta_norm, "v_norm": v_norm}
