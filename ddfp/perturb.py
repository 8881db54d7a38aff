"""Density-descending feature perturbation: the method's step on the decoder feature V.

delta* = eps * g / |g|_2 per pixel, with g = d NLL_mixture(classifier(V + delta)) / d delta at delta = 0,
the NLL summed over confident pixels. Ascending the NLL descends the density: features are pushed
towards low-density regions, where the decision boundary should not lie.

mask="confident" (the paper, default): delta is zero outside confident pixels.
mask="all" (the authors' code): every pixel keeps its normalised gradient; in train-mode BN every pixel
gets one through the batch statistics, so every pixel moves by eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ddfp.flow import DensityEstimator
from ddfp.model import DeepLabV3Plus


@dataclass
class Perturbation:
    delta: Tensor  # B x 304 x h x w, constant (no graph)
    nll_before: Tensor  # scalar: mean mixture NLL of the confident features at delta = 0


def pixels_last(x: Tensor) -> Tensor:
    """B x C x h x w -> (B*h*w) x C."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def density_descending_delta(
    model: DeepLabV3Plus, flow: DensityEstimator, v: Tensor, confident: Tensor, eps: float, mask: str
) -> Perturbation:
    """One gradient step on the offset of V (detached), through the classifier's aux BN.

    confident: B x h x w bool at feature resolution. The aux BN's running statistics are left
    untouched (update_stats=False). Gradients go to delta only (autograd.grad), never to the flow or
    the segmentation net.
    """
    delta = torch.zeros_like(v, requires_grad=True)
    _, feats = model.classify(v.detach() + delta, n_main=0, update_stats=False)
    logp = flow.log_prob(pixels_last(feats))
    weights = confident.reshape(-1).to(logp.dtype)
    nll_sum = -(logp * weights).sum()
    (grad,) = torch.autograd.grad(nll_sum, delta)
    direction = F.normalize(grad.float(), dim=1, eps=1e-12)
    if mask == "confident":
        direction = direction * confident[:, None].to(direction.dtype)
    nll_before = nll_sum.detach() / weights.sum().clamp_min(1.0)
    return Perturbation((eps * direction).to(v.dtype), nll_before)
