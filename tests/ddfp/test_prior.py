import math

import torch
from torch import distributions as D

from ddfp.flow.prior import UNLABELLED, GaussianMixturePrior


def test_log_probs_match_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    prior = GaussianMixturePrior(5, 16, generator=gen)
    z = 2 * torch.randn(64, 16, generator=gen)
    means = prior.means.detach()
    comp = D.Independent(D.Normal(means, torch.ones_like(means)), 1)
    mixture = D.MixtureSameFamily(D.Categorical(logits=torch.zeros(5)), comp)
    assert torch.allclose(prior.log_prob(z), mixture.log_prob(z), atol=1e-3)
    labels = torch.randint(0, 5, (64,), generator=gen)
    labels[::3] = UNLABELLED
    expected = torch.where(labels >= 0, comp.log_prob(z[:, None]).gather(1, labels.clamp_min(0)[:, None])[:, 0],
                           mixture.log_prob(z))
    assert torch.allclose(prior.log_prob(z, labels), expected, atol=1e-3)
    assert math.isclose(float(prior.component_log_probs(means[:1])[0, 0].detach()), -8 * math.log(2 * math.pi), rel_tol=1e-5)
