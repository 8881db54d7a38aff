import torch

from ddfp.perturb import density_descending_delta, pixels_last
from tests.conftest import make_models


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


def test_norm_is_eps_on_confident_pixels_and_zero_elsewhere(smoke_cfg):
    student, flow, v = fitted(smoke_cfg)
    confident = torch.zeros(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    confident[:, :3] = True
    pert = density_descending_delta(student, flow, v, confident, 4.0, "confident")
    norms = pert.delta.norm(dim=1)
    assert torch.allclose(norms[confident], torch.full_like(norms[confident], 4.0), atol=1e-4)
    assert torch.all(norms[~confident] == 0)
    every = density_descending_delta(student, flow, v, confident, 4.0, "all").delta.norm(dim=1)
    assert (every[~confident] > 3.99).float().mean() > 0.9  # train-mode BN couples every pixel


def test_no_confident_pixel_gives_zero_delta_and_finite_values(smoke_cfg):
    student, flow, v = fitted(smoke_cfg)
    none = torch.zeros(v.shape[0], *v.shape[-2:], dtype=torch.bool)
    pert = density_descending_delta(student, flow, v, none, 4.0, "confident")
    assert torch.all(pert.delta == 0) and torch.isfinite(pert.nll_before)


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
