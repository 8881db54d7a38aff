import pytest
import torch

from ddfp.data.spec import IGNORE_INDEX
from ddfp.flow.prior import UNLABELLED
from ddfp.losses import downsample_labels
from ddfp.perturb import pixels_last
from ddfp.methods import phase_at, train_step
from ddfp.step import Phase
from pipeline import params
from pipeline.train.learner import Learner
from tests.helpers.models import make_batch, make_models

DDFP = Phase(semi=True, fit_flow=True, perturb=True, aux_bn=True, ema_teacher=True)
WARMUP = Phase(semi=True, fit_flow=True, perturb=False, aux_bn=True, ema_teacher=True)  # the flow's warm-up: no perturbation
SUP_EPOCH = Phase(semi=False, aux_bn=True, ema_teacher=True)  # DDFP's supervised epoch (the aux BN warms up)
MT = Phase(semi=True, ema_teacher=True)


def test_phases_follow_method_and_epoch(smoke_cfg):
    assert phase_at(0, smoke_cfg) == SUP_EPOCH
    assert phase_at(1, smoke_cfg) == WARMUP
    assert phase_at(2, smoke_cfg) == DDFP
    mt = params.replace(smoke_cfg, {"train.method": "mean_teacher"})
    assert phase_at(5, mt) == MT
    sup = params.replace(smoke_cfg, {"train.method": "supervised"})
    assert phase_at(5, sup) == Phase(False)
    for method in ("fixmatch", "unimatch"):  # no teacher, no aux BN, no flow: the network pseudo-labels itself
        own = params.replace(smoke_cfg, {"train.method": method})
        assert phase_at(0, own) == Phase(False) and phase_at(5, own) == Phase(True)


def test_full_step_returns_losses_and_diagnostics(smoke_cfg):
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.0})
    out = train_step(make_models(cfg), make_batch(cfg), DDFP, cfg)
    for key in ("loss_sup", "loss_unsup", "loss_perturb", "flow_bpd", "nll_fit", "nll_query", "nll_after",
                "delta_norm", "v_norm", "confident_ratio"):
        assert torch.isfinite(out.logs[key]), key
    assert abs(float(out.logs["delta_norm"]) - cfg.perturb.eps) < 1e-3
    assert float(out.logs["confident_ratio"]) > 0.5


@pytest.mark.parametrize("phase", [DDFP, WARMUP])
def test_skipping_diagnostics_leaves_the_losses_unchanged(smoke_cfg, phase):
    # The trainer skips them on unlogged iterations; that must not change what is trained.
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.0, "model.dropout": 0.0})
    models, batch = make_models(cfg), make_batch(cfg)
    runs = []
    for diagnostics in (True, False):
        torch.manual_seed(0)
        runs.append(train_step(models, batch, phase, cfg, diagnostics=diagnostics))
    with_diag, without = runs
    assert torch.equal(with_diag.seg_loss, without.seg_loss)
    assert torch.equal(with_diag.flow_loss, without.flow_loss)
    assert {"nll_fit", "nll_query"} <= set(with_diag.logs)
    assert not {"nll_fit", "nll_query", "nll_after"} & set(without.logs)


def test_no_confident_pixel_gives_no_nan(smoke_cfg):
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 1.0})  # nothing is strictly above 1
    models = make_models(cfg)
    out = train_step(models, make_batch(cfg), DDFP, cfg)
    assert float(out.logs["confident_ratio"]) == 0.0
    assert float(out.logs["loss_unsup"]) == 0.0 and float(out.logs["loss_perturb"]) == 0.0
    out.seg_loss.backward()
    out.flow_loss.backward()
    for p in list(models.student.parameters()) + list(models.flow.parameters()):
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_non_finite_loss_skips_the_update(smoke_cfg):
    cfg = params.replace(smoke_cfg, {"train.max_iters": 10})
    tr = Learner(cfg, torch.device("cpu"), cfg.train.max_iters)
    batch = make_batch(cfg)
    batch.img_x[0, 0, 0, 0] = float("nan")  # poisons the segmentation loss (and the teacher's BN)
    before = {k: v.clone() for k, v in tr.models.student.state_dict().items()}
    flow_before = {k: v.clone() for k, v in tr.models.flow.state_dict().items()}
    step = tr.run_iteration(batch, DDFP, 0)
    assert step.seg_skipped
    for k, v in tr.models.student.named_parameters():
        assert torch.equal(v, before[k]), k
    for k, v in tr.models.flow.state_dict().items():
        assert torch.isfinite(v).all() and (not step.flow_skipped or torch.equal(v, flow_before[k]))


def _states(tr: Learner) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in getattr(tr.models, name).state_dict().items()}
            for name in ("student", "teacher")}


@pytest.mark.parametrize("pseudo_label_mode", ["eval", "train"])
def test_a_skipped_batch_leaves_no_trace_and_the_teacher_still_predicts(smoke_cfg, pseudo_label_mode):
    # The train-mode forward writes the batch's BN statistics before the loss is known to be NaN
    # (and a train-mode teacher writes its own): a skip must put every buffer back, or the next clean
    # step's EMA copies NaN statistics into the reported teacher.
    cfg = params.replace(smoke_cfg, {"train.max_iters": 10, "teacher.pseudo_label_mode": pseudo_label_mode})
    tr = Learner(cfg, torch.device("cpu"), cfg.train.max_iters)
    clean = tr.run_iteration(make_batch(cfg, seed=1), DDFP, 0)  # a clean step first: the teacher is an EMA now
    before = _states(tr)
    poisoned = make_batch(cfg, seed=2)
    poisoned.img_x[0, 0, 0, 0] = float("nan")
    poisoned.img_u_w[0, 0, 0, 0] = float("nan")
    step = tr.run_iteration(poisoned, DDFP, 0)
    assert (clean.seg_skipped, step.seg_skipped) == (False, True)
    after = _states(tr)
    for name in before:
        for k, v in before[name].items():
            assert torch.equal(after[name][k], v), f"{name}.{k} changed by a skipped update"
    tr.run_iteration(make_batch(cfg, seed=3), DDFP, 0)  # the next clean step updates the teacher
    for k, v in tr.models.teacher.state_dict().items():
        assert not v.is_floating_point() or torch.isfinite(v).all(), k
    tr.models.teacher.eval()
    with torch.no_grad():
        logits = tr.models.teacher(make_batch(cfg, seed=4).img_x).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("phase", [DDFP, WARMUP])
def test_diagnostics_leave_the_random_stream_alone(smoke_cfg, phase):
    # run.log_every decides where diagnostics run; it must not change what is trained later, so
    # the diagnostics may not draw from the global generator that later steps draw from.
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.0})
    models, batch = make_models(cfg), make_batch(cfg)
    after = []
    for diagnostics in (True, False):
        torch.manual_seed(0)
        train_step(models, batch, phase, cfg, diagnostics=diagnostics)
        after.append(torch.rand(4))
    assert torch.equal(after[0], after[1])


def _record_classifier_calls(models) -> list[dict]:
    """Every call of the student's classifier (its arguments and features) and the images the student
    encoded, through forward hooks: what the step really computed, dropout masks included."""
    calls: list[dict] = []
    models.student.backbone.register_forward_pre_hook(lambda m, args: calls.append({"images": args[0]}))
    models.student.classifier.register_forward_hook(
        lambda m, args, out: calls.append({"n_main": args[1], "update_stats": args[2], "feats": out[1]}))
    return calls


def _fit_nll(flow, feats, mask_x, ignore_u):
    """The flow's fit loss on every pixel: labelled class-conditionally, unpadded unlabelled under the mixture."""
    size = feats.shape[-2:]
    pad_u = downsample_labels(ignore_u, size) == IGNORE_INDEX
    lab_u = torch.full_like(pad_u, UNLABELLED, dtype=torch.long).masked_fill(pad_u, IGNORE_INDEX)
    labels = torch.cat([downsample_labels(mask_x, size), lab_u]).reshape(-1)
    keep = labels != IGNORE_INDEX
    with torch.no_grad():
        return flow.nll(pixels_last(feats)[keep], labels[keep]).nll


def _fit_cfg(smoke_cfg, **extra):
    # Every pixel enters the fit and no noise is added: the fit loss is then a function of the features.
    return params.replace(smoke_cfg, {"flow.num_samples": 4096, "flow.input_noise": 0.0,
                                      "train.cutmix_prob": 1.0, **extra})


def _batch_padded_unevenly(cfg):
    # Only the top half of unlabelled image 0 is padding: CutMix moves padding between images.
    batch = make_batch(cfg)
    batch.ignore_u.zero_()
    batch.ignore_u[0, : batch.ignore_u.shape[1] // 2] = IGNORE_INDEX
    return batch


@pytest.mark.parametrize("phase", [DDFP, WARMUP])
def test_flow_is_fitted_on_the_students_main_pass_features_without_mixed_padding(smoke_cfg, phase):
    cfg = _fit_cfg(smoke_cfg)
    models, batch = make_models(cfg), _batch_padded_unevenly(cfg)
    calls = _record_classifier_calls(models)
    b = batch.img_x.shape[0]
    out = train_step(models, batch, phase, cfg, diagnostics=False)
    main = calls[-1]  # the search pass (DDFP) comes before the main pass
    assert main["n_main"] == (2 * b if phase.perturb else b)
    img_s = calls[0]["images"][b:]
    inside = (img_s != batch.img_u_s).any(dim=1)  # CutMix boxes: content of the next image
    mixed = torch.where(inside, batch.ignore_u.roll(-1, dims=0), batch.ignore_u)
    assert inside.any() and not torch.equal(mixed, batch.ignore_u)
    feats = main["feats"][: 2 * b].detach()
    torch.testing.assert_close(out.flow_loss, _fit_nll(models.flow, feats, batch.mask_x, mixed))
    assert not torch.allclose(out.flow_loss, _fit_nll(models.flow, feats, batch.mask_x, batch.ignore_u))


def test_fit_on_teacher_fits_the_teachers_clean_features(smoke_cfg):
    cfg = _fit_cfg(smoke_cfg, **{"flow.fit_on": "teacher"})
    models, batch = make_models(cfg), _batch_padded_unevenly(cfg)
    out = train_step(models, batch, DDFP, cfg, diagnostics=False)
    with torch.no_grad():
        t_feats = models.teacher.eval()(torch.cat([batch.img_x, batch.img_u_w])).feats
    torch.testing.assert_close(out.flow_loss, _fit_nll(models.flow, t_feats, batch.mask_x, batch.ignore_u))


def _confident_nll(flow, feats, confident):
    with torch.no_grad():
        return -flow.log_prob(pixels_last(feats))[confident.reshape(-1)].mean()


@pytest.mark.parametrize("phase", [DDFP, WARMUP])
def test_nll_fit_and_nll_query_measure_the_fitted_and_the_searched_features(smoke_cfg, phase):
    cfg = _fit_cfg(smoke_cfg, **{"train.conf_thresh": 0.0})  # every unpadded pixel is confident
    models, batch = make_models(cfg), _batch_padded_unevenly(cfg)
    calls = _record_classifier_calls(models)
    b = batch.img_x.shape[0]
    out = train_step(models, batch, phase, cfg, diagnostics=True)
    passes = [c for c in calls if "feats" in c]
    main = passes[1] if phase.perturb else passes[0]
    query = passes[0] if phase.perturb else passes[1]  # warm-up: the search's pass, for the record only
    assert (query["n_main"], query["update_stats"]) == (0, False)  # aux BN, batch statistics, no trace
    img_s = calls[0]["images"][b:]
    inside = (img_s != batch.img_u_s).any(dim=1)
    mixed = torch.where(inside, batch.ignore_u.roll(-1, dims=0), batch.ignore_u)
    confident = downsample_labels(mixed, main["feats"].shape[-2:]) != IGNORE_INDEX
    torch.testing.assert_close(out.logs["nll_fit"], _confident_nll(models.flow, main["feats"][b : 2 * b], confident))
    torch.testing.assert_close(out.logs["nll_query"], _confident_nll(models.flow, query["feats"], confident))


def _straightforward_ddfp_losses(models, batch, cfg):
    """The DDFP step as the method reads, with nothing shared: the search differentiates the whole
    classifier w.r.t. an offset of V, and the main pass classifies [V ; V_u + delta] from scratch."""
    from ddfp.data.mixing import maybe_cutmix
    from ddfp.step import _segmentation_loss, flow_step, teacher_predict

    b, student, p = batch.img_x.shape[0], models.student, cfg.perturb
    labels_w, _ = teacher_predict(models.teacher, batch, cfg)
    (img_s, labels_u, ignore_s), _ = maybe_cutmix(cfg.train.cutmix_prob, batch.img_u_s, labels_w, batch.ignore_u)
    v = student.encode(torch.cat([batch.img_x, img_s]))
    confident = downsample_labels(labels_u, v.shape[-2:]) != IGNORE_INDEX
    offset = torch.zeros_like(v[b:], requires_grad=True)
    feats_q = student.classify(v[b:].detach() + offset, n_main=0, update_stats=False)[1]
    nll = -(models.flow.log_prob(pixels_last(feats_q)) * confident.reshape(-1).float()).sum()
    (grad,) = torch.autograd.grad(nll, offset)
    delta = p.eps * torch.nn.functional.normalize(grad, dim=1, eps=1e-12)
    if p.mask == "confident":
        delta = delta * confident[:, None].float()
    logits, feats = student.classify(torch.cat([v, v[b:] + delta]), n_main=2 * b)
    seg, _ = _segmentation_loss(logits, batch, labels_u, DDFP, cfg)
    flow_loss, _ = flow_step(models.flow, feats[: 2 * b].detach(), batch.mask_x, ignore_s, cfg)
    return seg, flow_loss, delta


@pytest.mark.parametrize("mask", ["confident", "all"])
def test_the_shared_first_conv_step_equals_the_straightforward_one(smoke_cfg, mask):
    # The step convolves the unlabelled V once and reuses it for the search and the perturbed rows
    # (conv1 is linear). Same seed, same dropout draws: the losses, the offset and every gradient of
    # the student must match the straightforward computation up to float rounding.
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.1, "perturb.mask": mask, "train.cutmix_prob": 1.0})
    models, batch = make_models(cfg), make_batch(cfg)
    models.student.train()
    offsets = []
    models.student.classifier.register_forward_pre_hook(lambda m, args: offsets.append(args[0]))
    results = []
    for step in ("optimised", "straightforward"):
        torch.manual_seed(0)
        if step == "optimised":
            out = train_step(models, batch, DDFP, cfg, diagnostics=False)
            seg, flow_loss = out.seg_loss, out.flow_loss
            h = offsets[-1]  # [conv1(V) ; conv1(V) + conv1(delta) of the unlabelled rows]
            b = batch.img_x.shape[0]
            delta_response = h[2 * b :] - h[b : 2 * b]
        else:
            seg, flow_loss, delta = _straightforward_ddfp_losses(models, batch, cfg)
            c = models.student.classifier.conv1
            delta_response = torch.nn.functional.conv2d(delta, c.weight, None, padding=c.padding)
        models.student.zero_grad(set_to_none=True)
        seg.backward()
        grads = {n: p.grad.clone() for n, p in models.student.named_parameters() if p.grad is not None}
        results.append((seg.detach(), flow_loss.detach(), delta_response.detach(), grads))
    (seg_a, flow_a, resp_a, grads_a), (seg_b, flow_b, resp_b, grads_b) = results
    assert float(resp_b.abs().max()) > 0.1  # the offset moved the features: the comparison is not vacuous
    torch.testing.assert_close(seg_a, seg_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flow_a, flow_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resp_a, resp_b, rtol=1e-4, atol=1e-4)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("method,phase", [("ddfp", SUP_EPOCH), ("mean_teacher", MT), ("ddfp", WARMUP), ("ddfp", DDFP),
                                          ("fixmatch", Phase(True)), ("unimatch", Phase(True))])
@pytest.mark.parametrize("diagnostics", [False, True])
def test_the_step_reads_nothing_back_to_the_host(smoke_cfg, method, phase, diagnostics):
    # A value read back (item, bool, nonzero, mask indexing) makes a GPU wait for the queued work.
    from tests.helpers.host_reads import HostReads

    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.5, "train.cutmix_prob": 1.0, "train.method": method})
    models, batch = make_models(cfg), make_batch(cfg)
    nets = (models.student, models.teacher, models.flow)
    watched = [t for m in nets for t in (*m.parameters(), *m.buffers())] + list(vars(batch).values())
    with HostReads(watched) as reads:
        out = train_step(models, batch, phase, cfg, diagnostics=diagnostics)
    assert torch.isfinite(out.seg_loss) and reads.reads == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("diagnostics", [False, True])
def test_the_step_never_waits_for_the_gpu(smoke_cfg, diagnostics):
    # CUDA's own check of what the CPU proxy above approximates: any host sync raises.
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.5, "train.cutmix_prob": 1.0})
    models, batch = make_models(cfg), make_batch(cfg)
    dev = torch.device("cuda")
    models = type(models)(models.student.to(dev), models.teacher.to(dev), models.flow.to(dev))
    batch = type(batch)(*(t.to(dev) for t in vars(batch).values()))
    train_step(models, batch, DDFP, cfg, diagnostics=diagnostics)  # first use: cuDNN and allocator set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for phase in (SUP_EPOCH, MT, WARMUP, DDFP):
            train_step(models, batch, phase, cfg, diagnostics=diagnostics)
        for method in ("fixmatch", "unimatch"):
            train_step(models, batch, Phase(True), params.replace(cfg, {"train.method": method}), diagnostics)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_step_runs_as_on_a_gpu_in_bf16_and_nhwc(smoke_cfg):
    # The GPU recipe (bf16 autocast, channels_last) on CPU: the shared first conv's transpose gets a
    # bf16 gradient and must hand back a delta of norm eps in the features' dtype.
    cfg = params.replace(smoke_cfg, {"train.conf_thresh": 0.1})
    models, batch = make_models(cfg), make_batch(cfg)
    for net in (models.student, models.teacher):
        net.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = train_step(models, batch, DDFP, cfg, diagnostics=True)
    (out.seg_loss + out.flow_loss).backward()
    assert all(torch.isfinite(v) for v in out.logs.values())
    assert abs(float(out.logs["delta_norm"]) - cfg.perturb.eps) < 0.05  # bf16 rounding of delta
