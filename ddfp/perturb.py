"""Density-descending feature perturbation: the method's step on the decoder feature V.

delta* = eps * g / |g|_2 per pixel, with g = d NLL_mixture(classifier(V + delta)) / d delta at delta = 0,
the NLL summed over confident pixels. Ascending the NLL descends the density: features are pushed
towards low-density regions, where the decision boundary should not lie.

mask="confident" (the paper, default): delta is zero outside confident pixels.
mask="all" (the authors' code): every pixel keeps its normalised gradient; in train-mode BN every pixel
gets one through the batch statistics, so every pixel moves by eps.

direction="random" is the control that isolates the density direction: a Gaussian direction normalised
over channels per pixel, the same eps and mask, drawn from the training RNG (it is part of training).
direction="dropout" puts UniMatch's feature perturbation in the same place: delta = Dropout2d(0.5)(V) - V
(half of V's channels dropped per image, the rest doubled), under the same mask; eps does not apply (the
dropout sets the size). Network, BN routing and loss weights stay DDFP's, so only the kind of
perturbation differs.
eps = 0 gives delta == 0 exactly: the perturbation branch without a perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ddfp.flow.density import DensityEstimator
from ddfp.model.deeplab import DeepLabV3Plus


FEATURE_DROPOUT = 0.5  # UniMatch's nn.Dropout2d(0.5) on the features it perturbs


@dataclass
class Perturbation:
    delta: Tensor  # B x 304 x h x w, constant (no graph)
    nll_query: Tensor  # scalar: mean mixture NLL of the confident features where the gradient is taken


def pixels_last(x: Tensor) -> Tensor:
    """B x C x h x w -> (B*h*w) x C."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def query_nll(model: DeepLabV3Plus, flow: DensityEstimator, h: Tensor, confident: Tensor) -> tuple[Tensor, Tensor]:
    """(summed, mean) mixture NLL of the confident pixels of classifier(V), given h = first_conv(V), as
    the search sees them: aux BN with batch statistics (its running statistics untouched), dropout as in
    training."""
    _, feats = model.classify_from(h, n_main=0, update_stats=False)
    logp = flow.log_prob(pixels_last(feats))
    weights = confident.reshape(-1).to(logp.dtype)
    nll_sum = -(logp * weights).sum()
    return nll_sum, nll_sum.detach() / weights.sum().clamp_min(1.0)


def density_descending_delta(
    model: DeepLabV3Plus, flow: DensityEstimator, v: Tensor, confident: Tensor, eps: float, mask: str,
    direction: str = "density", first: Tensor | None = None,
) -> Perturbation:
    """One gradient step on the offset of V (detached), through the classifier's aux BN.

    confident: B x h x w bool at feature resolution. Gradients go to delta only (autograd.grad), never
    to the flow or the segmentation net. The random direction still runs the query pass (without a
    graph): both directions log nll_query and keep the search's cost and dropout draws.

    first: first_conv(v), when the caller has it (the main pass computes it for the clean batch), so
    the search does not convolve v again. The offset is taken on conv1's output, where the gradient
    is the same as on conv1(V + delta) at delta = 0, and brought back to V by conv1's transpose.
    """
    density = direction == "density"
    with torch.no_grad():
        h = model.first_conv(v) if first is None else first
    h = h.detach().requires_grad_(density)
    with torch.set_grad_enabled(density):
        nll_sum, nll_query = query_nll(model, flow, h, confident)
    if density:
        (grad_h,) = torch.autograd.grad(nll_sum, h)
    with torch.no_grad():  # delta is a constant: no graph to conv1's weight
        if direction == "dropout":
            delta = F.dropout2d(v, FEATURE_DROPOUT, training=True) - v
            return Perturbation(delta * confident[:, None].to(v.dtype) if mask == "confident" else delta, nll_query)
        step = model.offset_gradient(grad_h, v.shape).float() if density else torch.randn(v.shape, device=v.device)
        # eps * step / |step| per pixel (F.normalize's floor of 1e-12), zero outside the mask: one
        # per-pixel scale, so the B x C x h x w map is touched once.
        scale = eps / step.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if mask == "confident":
            scale = scale * confident[:, None].to(scale.dtype)
        return Perturbation((step * scale).to(v.dtype), nll_query)
