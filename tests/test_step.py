import pytest
import torch

from ddfp import config
from ddfp.step import Phase, train_step
from pipeline.tracking import NullTracker
from pipeline.run_state import Trainer
from tests.conftest import make_batch, make_models

DDFP = Phase(semi=True, fit_flow=True, perturb=True)


def test_phases_follow_method_and_epoch(smoke_cfg):
    assert Phase.at_epoch(0, smoke_cfg) == Phase(False, False, False)
    assert Phase.at_epoch(1, smoke_cfg) == Phase(True, True, False)
    assert Phase.at_epoch(2, smoke_cfg) == DDFP
    mt = config.replace(smoke_cfg, {"train.method": "mean_teacher"})
    assert Phase.at_epoch(5, mt) == Phase(True, False, False)
    sup = config.replace(smoke_cfg, {"train.method": "supervised"})
    assert Phase.at_epoch(5, sup) == Phase(False, False, False)


def test_full_step_returns_losses_and_diagnostics(smoke_cfg):
    cfg = config.replace(smoke_cfg, {"train.conf_thresh": 0.0})
    out = train_step(make_models(cfg), make_batch(cfg), DDFP, cfg)
    for key in ("loss_sup", "loss_unsup", "loss_perturb", "flow_bpd", "nll_before", "nll_after",
                "delta_norm", "v_norm", "confident_ratio"):
        assert torch.isfinite(out.logs[key]), key
    assert abs(float(out.logs["delta_norm"]) - cfg.perturb.eps) < 1e-3
    assert float(out.logs["confident_ratio"]) > 0.5


def test_skipping_diagnostics_leaves_the_losses_unchanged(smoke_cfg):
    # The trainer skips them on unlogged iterations; that must not change what is trained.
    cfg = config.replace(smoke_cfg, {"train.conf_thresh": 0.0, "model.dropout": 0.0})
    models, batch = make_models(cfg), make_batch(cfg)
    runs = []
    for diagnostics in (True, False):
        torch.manual_seed(0)
        runs.append(train_step(models, batch, DDFP, cfg, diagnostics=diagnostics))
    with_diag, without = runs
    assert torch.equal(with_diag.seg_loss, without.seg_loss)
    assert "nll_after" in with_diag.logs and "nll_after" not in without.logs


def test_no_confident_pixel_gives_no_nan(smoke_cfg):
    cfg = config.replace(smoke_cfg, {"train.conf_thresh": 1.0})  # nothing is strictly above 1
    models = make_models(cfg)
    out = train_step(models, make_batch(cfg), DDFP, cfg)
    assert float(out.logs["confident_ratio"]) == 0.0
    assert float(out.logs["loss_unsup"]) == 0.0 and float(out.logs["loss_perturb"]) == 0.0
    out.seg_loss.backward()
    out.flow_loss.backward()
    for p in list(models.student.parameters()) + list(models.flow.parameters()):
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_non_finite_loss_skips_the_update(smoke_cfg):
    cfg = config.replace(smoke_cfg, {"train.max_iters": 10})
    tr = Trainer(cfg, None, NullTracker(), torch.device("cpu"))
    batch = make_batch(cfg)
    batch.img_x[0, 0, 0, 0] = float("nan")  # poisons the segmentation loss (and the teacher's BN)
    before = {k: v.clone() for k, v in tr.models.student.state_dict().items()}
    flow_before = {k: v.clone() for k, v in tr.models.flow.state_dict().items()}
    tr.run_iteration(batch, DDFP)
    assert tr.skipped["seg"] == 1
    for k, v in tr.models.student.named_parameters():
        assert torch.equal(v, before[k]), k
    for k, v in tr.models.flow.state_dict().items():
        assert torch.isfinite(v).all() and (tr.skipped["flow"] == 0 or torch.equal(v, flow_before[k]))


def _states(tr: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in getattr(tr.models, name).state_dict().items()}
            for name in ("student", "teacher")}


@pytest.mark.parametrize("pseudo_label_mode", ["eval", "train"])
def test_a_skipped_batch_leaves_no_trace_and_the_teacher_still_predicts(smoke_cfg, pseudo_label_mode):
    # The train-mode forward writes the batch's BN statistics before the loss is known to be NaN
    # (and a train-mode teacher writes its own): a skip must put every buffer back, or the next clean
    # step's EMA copies NaN statistics into the reported teacher.
    cfg = config.replace(smoke_cfg, {"train.max_iters": 10, "teacher.pseudo_label_mode": pseudo_label_mode})
    tr = Trainer(cfg, None, NullTracker(), torch.device("cpu"))
    tr.run_iteration(make_batch(cfg, seed=1), DDFP)  # a clean step first: the teacher is an EMA now
    before = _states(tr)
    poisoned = make_batch(cfg, seed=2)
    poisoned.img_x[0, 0, 0, 0] = float("nan")
    poisoned.img_u_w[0, 0, 0, 0] = float("nan")
    tr.run_iteration(poisoned, DDFP)
    assert tr.skipped["seg"] == 1
    after = _states(tr)
    for name in before:
        for k, v in before[name].items():
            assert torch.equal(after[name][k], v), f"{name}.{k} changed by a skipped update"
    tr.run_iteration(make_batch(cfg, seed=3), DDFP)  # the next clean step updates the teacher
    for k, v in tr.models.teacher.state_dict().items():
        assert not v.is_floating_point() or torch.isfinite(v).all(), k
    tr.models.teacher.eval()
    with torch.no_grad():
        logits = tr.models.teacher(make_batch(cfg, seed=4).img_x).logits
    assert torch.isfinite(logits).all()


def test_diagnostics_leave_the_random_stream_alone(smoke_cfg):
    # train.log_every decides where diagnostics run; it must not change what is trained later, so
    # the diagnostics may not draw from the global generator that later steps draw from.
    cfg = config.replace(smoke_cfg, {"train.conf_thresh": 0.0})
    models, batch = make_models(cfg), make_batch(cfg)
    after = []
    for diagnostics in (True, False):
        torch.manual_seed(0)
        train_step(models, batch, DDFP, cfg, diagnostics=diagnostics)
        after.append(torch.rand(4))
    assert torch.equal(after[0], after[1])
