import torch

from ddfp.flow.density import DensityEstimator, sample_pixels
from pipeline import params


def small_flow(dim=6, classes=2, **kw):
    cfg = params.load(profile="smoke").flow.model_copy(update={"hidden_dim": 16, **kw})
    return DensityEstimator(cfg, dim, classes)


def test_inverse_reconstructs_input():
    flow = small_flow(dim=32)
    x = torch.randn(50, 32)
    z, _ = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-5)


def test_log_det_equals_autograd_jacobian():
    flow = small_flow(dim=6).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    _, log_det = flow.inn(x)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: flow.inn(v[None])[0][0], x[i])
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-8)


def test_fitting_two_clusters_lowers_nll():
    torch.manual_seed(0)
    flow = small_flow(dim=4)
    labels = torch.randint(0, 2, (512,))
    x = torch.randn(512, 4) * 0.3 + (labels[:, None].float() * 6 - 3)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    before = float(flow.nll(x, labels).nll.detach())
    for _ in range(150):
        opt.zero_grad()
        flow.nll(x, labels).nll.backward()
        opt.step()
    after = float(flow.nll(x, labels).nll.detach())
    assert after < before - 1.0


def test_permutations_come_from_a_local_generator():
    state = torch.get_rng_state()
    a, b = small_flow(dim=8), small_flow(dim=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_sample_pixels_never_picks_invalid_entries_as_weighted():
    valid = torch.zeros(100, dtype=torch.bool)
    valid[[3, 50, 77]] = True
    idx, w = sample_pixels(valid, 10)
    assert set(idx[w > 0].tolist()) == {3, 50, 77} and int(w.sum()) == 3


def test_the_permutations_gradient_is_autograds_exactly():
    # The permutation's backward gathers with the inverse index instead of autograd's scatter-add:
    # the same numbers, bit for bit, in both directions of the flow.
    flow = small_flow(dim=32)
    x = torch.randn(50, 32, requires_grad=True)
    g = torch.randn(50, 32)
    for rev in (False, True):
        perm = flow.inn.module_list[1]
        index = perm.perm_inv if rev else perm.perm
        ours = perm([x], rev=rev)[0][0]
        plain = x[:, index]
        assert torch.equal(ours, plain)
        assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(plain, x, g)[0])
