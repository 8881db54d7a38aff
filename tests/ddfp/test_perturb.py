import pytest
import torch
import torch.nn.functional as F

from ddfp.perturb import density_descending_delta, pixels_last
from ddfp.methods import phase_at, train_step
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


def ddfp_steps(cfg, directions):
    """One DDFP step (perturbation phase) per perturb.direction, from the same models, batch and RNG."""
    models, batch = make_models(cfg), make_batch(cfg)
    ddfp = phase_at(cfg.train.perturb_start_epoch, cfg)
    outs = {}
    for direction in directions:
        torch.manual_seed(0)
        outs[direction] = train_step(models, batch, ddfp, params.replace(cfg, {"perturb.direction": direction}))
    return outs


def test_at_zero_eps_the_direction_changes_no_loss(smoke_cfg):
    # The eps = 0 control is the perturbation branch without a perturbation: the same network, BN
    # routing and loss weights, whatever direction would have been taken.
    cfg = params.replace(smoke_cfg, {"perturb.eps": 0.0, "train.conf_thresh": 0.0, "model.dropout": 0.0})
    outs = ddfp_steps(cfg, ("density", "random"))
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


def test_the_dropout_direction_is_unimatch_feature_dropout_under_the_mask(smoke_cfg):
    student, flow, v = fitted(smoke_cfg)
    confident = torch.zeros(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    confident[:, :3] = True
    delta = density_descending_delta(student, flow, v, confident, 4.0, "confident", "dropout").delta
    assert torch.all(delta[:, :, ~confident[0]] == 0)
    # Per image and channel: dropped (delta = -V) or kept and doubled (delta = +V), half of them each.
    moved = delta.permute(0, 2, 3, 1)[confident]  # pixels x C
    v_c = v.permute(0, 2, 3, 1)[confident]
    assert torch.all(torch.isclose(moved, v_c) | torch.isclose(moved, -v_c))
    d, v_top = delta[:, :, :3], v[:, :, :3]  # the confident rows
    dropped, kept = torch.isclose(d, -v_top).all(dim=(2, 3)), torch.isclose(d, v_top).all(dim=(2, 3))
    assert bool((dropped | kept).all())  # whole channels: Dropout2d, not per-pixel dropout
    live = v_top.abs().amax(dim=(2, 3)) > 0  # an all-zero channel is both
    assert 0.35 < float(dropped[live].float().mean()) < 0.65


def test_the_dropout_control_changes_only_the_perturbed_rows(smoke_cfg):
    # Network, BN routing and loss weights stay DDFP's: the clean rows' losses are the same to the bit,
    # the perturbed rows' loss differs, and the total is the same weighting of the three.
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.0, "model.dropout": 0.0})
    outs = ddfp_steps(cfg, ("density", "dropout"))
    a, b = outs["density"].logs, outs["dropout"].logs
    assert torch.equal(a["loss_sup"], b["loss_sup"]) and torch.equal(a["loss_unsup"], b["loss_unsup"])
    assert not torch.equal(a["loss_perturb"], b["loss_perturb"])
    w = cfg.loss
    for out, logs in ((outs["density"], a), (outs["dropout"], b)):
        expected = w.sup * logs["loss_sup"] + w.unsup * logs["loss_unsup"] + w.perturb * logs["loss_perturb"]
        torch.testing.assert_close(out.seg_loss.detach(), expected)
    phase = phase_at(cfg.train.perturb_start_epoch, params.replace(cfg, {"perturb.direction": "dropout"}))
    assert phase.aux_bn and phase.perturb  # the perturbed rows go through the aux BN, as DDFP's do
