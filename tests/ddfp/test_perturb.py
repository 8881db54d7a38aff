import pytest
import torch
import torch.nn.functional as F

from ddfp.perturb import density_descending_delta, pixels_last
from ddfp.methods import phase_at, train_step
from ddfp.step import Phase
from pipeline import params
from tests.helpers.models import make_batch, make_models


def fitted(smoke_cfg):
    models = make_models(smoke_cfg)
    student, flow = models.student.train(), models.flow
    v = student.encode(torch.randn(4, 3, 32, 32)).detach()
    with torch.no_grad():
        feats = student.classify(v, n_main=0, update_stats=False)[1]
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        flow.nll(pixels_last(feats)).nll.backward()
        opt.step()
    return student, flow, v


@pytest.mark.parametrize("direction", ["density", "random"])
def test_norm_is_eps_on_confident_pixels_and_zero_elsewhere(smoke_cfg, direction):
    student, flow, v = fitted(smoke_cfg)
    confident = torch.zeros(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    confident[:, :3] = True
    pert = density_descending_delta(student, flow, v, confident, 4.0, "confident", direction)
    norms = pert.delta.norm(dim=1)
    assert torch.allclose(norms[confident], torch.full_like(norms[confident], 4.0), atol=1e-4)
    assert torch.all(norms[~confident] == 0)
    every = density_descending_delta(student, flow, v, confident, 4.0, "all", direction).delta.norm(dim=1)
    assert (every[~confident] > 3.99).float().mean() > 0.9  # train-mode BN couples every pixel


@pytest.mark.parametrize("direction", ["density", "random"])
def test_zero_eps_gives_exactly_zero_delta(smoke_cfg, direction):
    student, flow, v = fitted(smoke_cfg)
    confident = torch.ones(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    pert = density_descending_delta(student, flow, v, confident, 0.0, "all", direction)
    assert torch.equal(pert.delta, torch.zeros_like(v)) and torch.isfinite(pert.nll_query)


def test_random_direction_is_uncorrelated_with_the_density_gradient(smoke_cfg):
    student, flow, v = fitted(smoke_cfg)
    student.eval()  # no dropout: both directions are taken on the same function
    confident = torch.ones(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    density = density_descending_delta(student, flow, v, confident, 2.0, "confident", "density").delta
    torch.manual_seed(1)  # the random direction is drawn from the training RNG: seeded, reproducible
    random = density_descending_delta(student, flow, v, confident, 2.0, "confident", "random").delta
    torch.manual_seed(1)
    again = density_descending_delta(student, flow, v, confident, 2.0, "confident", "random").delta
    assert torch.equal(random, again)
    cos = F.cosine_similarity(density, random, dim=1)  # per pixel, over channels
    assert abs(float(cos.mean())) < 0.03 and float(cos.abs().mean()) < 0.2
    assert torch.allclose(F.cosine_similarity(density, density, dim=1), torch.ones_like(cos))


def test_at_zero_eps_the_direction_changes_no_loss(smoke_cfg):
    # The eps = 0 control is the perturbation branch without a perturbation: the same network, BN
    # routing and loss weights, whatever direction would have been taken.
    cfg = params.replace(smoke_cfg, {"perturb.eps": 0.0, "train.conf_thresh": 0.0, "model.dropout": 0.0})
    models, batch = make_models(cfg), make_batch(cfg)
    ddfp = phase_at(cfg.train.perturb_start_epoch, cfg)
    outs = {}
    for direction in ("density", "random"):
        torch.manual_seed(0)
        outs[direction] = train_step(models, batch, ddfp, params.replace(cfg, {"perturb.direction": direction}))
    assert torch.equal(outs["density"].seg_loss, outs["random"].seg_loss)
    assert float(outs["random"].logs["delta_norm"]) == 0.0 and float(outs["random"].logs["loss_perturb"]) > 0


def test_no_confident_pixel_gives_zero_delta_and_finite_values(smoke_cfg):
    student, flow, v = fitted(smoke_cfg)
    none = torch.zeros(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    pert = density_descending_delta(student, flow, v, none, 4.0, "confident")
    assert torch.all(pert.delta == 0) and torch.isfinite(pert.nll_query)


def test_density_descending_beats_random_directions(smoke_cfg):
    student, flow, v = fitted(smoke_cfg)
    student.eval()  # no dropout: compare directions on the same function
    confident = torch.ones(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    pert = density_descending_delta(student, flow, v, confident, 2.0, "confident")

    def nll(delta):
        with torch.no_grad():
            return float(-flow.log_prob(pixels_last(student.classify(v + delta, n_main=0)[1])).mean())

    base, ours = nll(torch.zeros_like(v)), nll(pert.delta)
    gen = torch.Generator().manual_seed(1)
    randoms = []
    for _ in range(5):
        r = torch.randn(v.shape, generator=gen)
        randoms.append(nll(2.0 * r / r.norm(dim=1, keepdim=True)))
    assert ours > base and ours > max(randoms)
