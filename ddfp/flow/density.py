"""The density estimator: a GLOW coupling flow (FrEIA) on 256-d pixel features + a GMM prior.

Fitted online on clean features (the student's main pass by default, flow.fit_on); queried by the
perturbation on the student's features.
Runs in fp32 whatever the caller's autocast: log-determinants and exp-scaled couplings are not
bf16-safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from FrEIA.framework import SequenceINN
from FrEIA.modules import GLOWCouplingBlock, InvertibleModule
from torch import Tensor, nn

from ddfp.config import FlowConfig
from ddfp.flow.prior import GaussianMixturePrior


class _Permute(torch.autograd.Function):
    """x[:, index] whose backward gathers with the inverse permutation. Autograd's own backward of
    an index is a scatter-add into zeros (index_put with accumulate), several times slower on CPU for
    a map that is a plain permutation."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


class FixedPermutation(InvertibleModule):
    """Channel permutation drawn from a local generator (FrEIA's PermuteRandom reseeds NumPy's global
    RNG, so it would change every other random draw). Stored as a buffer, so checkpoints carry it."""

    def __init__(self, dims_in, dims_c=None, seed: int = 0):
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        perm = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("perm_inv", torch.argsort(perm))

    def forward(self, x, c=None, rev=False, jac=True):
        index, inverse = (self.perm_inv, self.perm) if rev else (self.perm, self.perm_inv)
        return (_Permute.apply(x[0], index, inverse),), torch.zeros(x[0].shape[0], device=x[0].device)

    def output_dims(self, input_dims):
        return input_dims


def _subnet(hidden: int):
    # The authors' subnet: Linear -> ReLU -> Linear(hidden, hidden) -> ReLU -> Linear. The ReLUs work in
    # place (a Linear's backward needs its input, not its output): the same numbers, one allocation
    # of N x hidden less each, a few percent of the flow's time.
    def make(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, c_out),
        )

    return make


@dataclass
class FlowNLL:
    nll: Tensor  # scalar: mean negative log-likelihood over the weighted samples (nats)
    bits_per_dim: Tensor  # scalar: nll / (D ln 2)


class DensityEstimator(nn.Module):
    """x -> (z, log|det J|) through n_blocks x [GLOW coupling, fixed permutation]; GMM prior on z."""

    def __init__(self, cfg: FlowConfig, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim = dim
        self.inn = SequenceINN(dim)
        # nn.Linear's default init would draw from the global RNG; every value is overwritten below
        # from a local generator, so the build leaves the global RNG untouched.
        with torch.random.fork_rng(devices=[]):
            for k in range(cfg.n_blocks):
                self.inn.append(GLOWCouplingBlock, subnet_constructor=_subnet(cfg.hidden_dim), clamp=cfg.clamp)
                self.inn.append(FixedPermutation, seed=cfg.perm_seed + k)
        gen = torch.Generator().manual_seed(cfg.perm_seed)
        # The authors overwrite every INN parameter, biases included, with 0.05 N(0, 1).
        with torch.no_grad():
            for p in self.inn.parameters():
                p.copy_(cfg.init_std * torch.randn(p.shape, generator=gen))
        self.prior = GaussianMixturePrior(num_classes, dim, generator=gen)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.inn(x.float())

    def inverse(self, z: Tensor) -> Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.inn(z.float(), rev=True)[0]

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-sample log p(x) = log p_prior(z) + log|det J| (labels: class, or -1 = mixture)."""
        z, log_det = self(x)
        return self.prior.log_prob(z, labels) + log_det

    def nll(self, x: Tensor, labels: Tensor | None = None, weights: Tensor | None = None) -> FlowNLL:
        """Weighted mean NLL (weights 0/1 mark valid samples; no host sync to count them)."""
        logp = self.log_prob(x, labels)
        if weights is None:
            nll = -logp.mean()
        else:
            nll = -(logp * weights).sum() / weights.sum().clamp_min(1.0)
        return FlowNLL(nll, nll / (self.dim * math.log(2.0)))


def sample_pixels(valid: Tensor, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Pick up to `num` valid entries of a flat mask without replacement, on the mask's device.

    Random scores with invalid entries pushed below every valid one, then topk: no host sync to count
    the valid pixels (the authors call int(valid.sum()) and np.random.choice every step). Returns
    indices and a 0/1 weight that is 0 where fewer than `num` valid entries existed.
    """
    scores = torch.rand(valid.shape, generator=generator, device=valid.device)
    scores = torch.where(valid, scores, scores - 2.0)
    idx = scores.topk(min(num, valid.numel())).indices
    return idx, valid[idx].float()


__all__ = ["DensityEstimator", "FixedPermutation", "FlowNLL", "sample_pixels"]
