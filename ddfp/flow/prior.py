"""Gaussian-mixture prior of the flow (FlowGMM style): one unit-covariance component per class.

log N(z; mu_k, I) = -1/2 (D log 2pi + |z - mu_k|^2). We expand |z - mu_k|^2 = |z|^2 - 2 z.mu_k + |mu_k|^2
so the N x K distance table is one matmul: the authors materialise an N x K x D difference tensor
(20,480 x 21 x 256 floats), which dominates their flow step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

UNLABELLED = -1  # label value meaning "score under the whole mixture" (the authors use 300)


class GaussianMixturePrior(nn.Module):
    """K isotropic unit Gaussians with learnable means and fixed uniform weights 1/K."""

    def __init__(self, num_components: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.means = nn.Parameter(torch.randn(num_components, dim, generator=generator))

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def component_log_probs(self, z: Tensor) -> Tensor:
        """N x D -> N x K table of log N(z; mu_k, I)."""
        means = self.means.to(z.dtype)
        sq = (z * z).sum(1, keepdim=True) - 2.0 * z @ means.T + (means * means).sum(1)
        return -0.5 * (self.dim * math.log(2 * math.pi) + sq.clamp_min(0))

    def log_prob(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-sample log p(z): class-conditional where labels >= 0, mixture where labels == -1.

        The class-conditional term has no log pi_y (the authors comment it out); the mixture term is
        logsumexp_k log N_k + log(1/K).
        """
        comp = self.component_log_probs(z)
        mixture = torch.logsumexp(comp, dim=1) - math.log(self.num_components)
        if labels is None:
            return mixture
        labelled = labels >= 0
        conditional = comp.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1)
        return torch.where(labelled, conditional, mixture)
