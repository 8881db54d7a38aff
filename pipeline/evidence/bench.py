"""`ddfp bench step`: median wall time of one training iteration per method (and DDFP's controls),
each one's ratio to mean teacher, and DDFP's breakdown.

Settings: `demo` (the active profile's model and batch), `paper` (ResNet-101,
output stride 16, 321 px, 2 labelled + 2 unlabelled, 20,480 flow samples, 21 classes) and, on a GPU,
`gpu` (the paper's training step: 513 px, 4 + 4 images, bf16 autocast, channels_last; the authors'
logs show 0.82 s/iteration on their GPUs) and `gpu16` (the authors' global batch, 16 + 16, in one
process; with the projected time of the pascal profile's 92-label run on that one GPU).
Every pixel is made confident (threshold 0) so the perturbation is timed at its worst case, as in the
reference measurement of the authors' modules. Weights are random: speed does not depend on them.

The machines are shared and noisy, so the variants are timed in rounds: each round times every
variant once, back to back, in an order rotated round by round, and each ratio is the median of the
rounds' own ratios, with its spread. A slow spell then slows both sides of a ratio alike.
`ddfp bench profile` charges the step's time to its parts instead (pipeline.evidence.profile_step).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ddfp.data.spec import IGNORE_INDEX
from ddfp.losses import downsample_labels
from ddfp.perturb import density_descending_delta
from ddfp.methods import phase_at, train_step
from ddfp.step import Batch, Phase, flow_step
from pipeline.evidence.arms import ARMS
from pipeline.evidence.profile_step import profile_steps
from pipeline.params import Config, load, replace
from pipeline.train.distributed import SINGLE
from pipeline.train.learner import Learner

PAPER = {"data.dataset": "pascal", "model.backbone": "resnet101", "model.output_stride": 16,
         "data.crop_size": 321, "train.batch_size": 2, "flow.num_samples": 20480, "flow.hidden_dim": 256}
GPU = {**PAPER, "data.crop_size": 513, "train.batch_size": 4, "train.precision": "bf16", "run.device": "cuda",
       "run.channels_last": True}
# The authors' global batch (4 GPUs x (4 + 4)) in one process.
GPU16 = {**GPU, "train.batch_size": 16}
SETTINGS = {"demo": {}, "paper": PAPER, "gpu": GPU, "gpu16": GPU16}
# Pascal's train_aug has 10,582 images; at 92 labels the other 10,490 are the unlabelled epoch.
PASCAL_UNLABELLED_AT_92 = 10_582 - 92
# The timed variants: name -> (train.method, overrides), each in its method's last phase: every arm of
# the ablation but two that time as others do (all_labels trains as supervised, eps 0 as DDFP), and
# ddfp_flow_only, DDFP's flow warm-up epoch (flow fitted, no perturbation).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{arm: spec for arm, spec in ARMS.items() if arm not in ("all_labels", "ddfp_eps0")},
    "ddfp_flow_only": ("ddfp", {}),
}
REFERENCE = "mean_teacher"  # every variant's time is also given as a ratio to this one's


@dataclass(frozen=True)
class Variant:
    cfg: Config
    phase: Phase
    momentum: dict = field(default_factory=lambda: defaultdict(dict))  # its own SGD state


def variants(cfg: Config) -> dict[str, Variant]:
    out = {}
    for name, (method, overrides) in VARIANTS.items():
        v_cfg = replace(cfg, {"train.method": method, **overrides})
        phase = phase_at(v_cfg.train.epochs - 1, v_cfg)
        out[name] = Variant(v_cfg, dataclasses.replace(phase, perturb=False) if name == "ddfp_flow_only" else phase)
    return out


def run_variant(tr: Learner, variant: Variant, batch: Batch, diagnostics: bool = False) -> Any:
    # One learner serves every variant: the models are the same for every method and only the step
    # (chosen by the config's train.method) differs. Each keeps its own SGD momentum, as its run would:
    # methods differ in which parameters get gradients (the aux BN), and the fused SGD needs every
    # stepped parameter's momentum buffer to exist or none.
    tr.cfg, tr.opt_seg.state = variant.cfg, variant.momentum
    return tr.run_iteration(batch, variant.phase, 0, diagnostics=diagnostics)


def random_batch(cfg: Config, num_classes: int, device: torch.device, gen: torch.Generator) -> Batch:
    b, s = cfg.train.batch_size, cfg.data.crop_size
    img = lambda: torch.randn(b, 3, s, s, generator=gen).to(device)  # noqa: E731
    mask = torch.randint(0, num_classes, (b, s, s), generator=gen)
    mask[:, : s // 16] = IGNORE_INDEX  # a void band, as real masks have
    ignore = torch.zeros(b, s, s, dtype=torch.long)
    ignore[:, -s // 16 :] = IGNORE_INDEX  # padding
    return Batch(img(), mask.to(device), img(), img(), ignore.to(device), img())


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn, device) for _ in range(repeats))


def paired_rounds(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int,
                  device: torch.device) -> dict[str, list[float]]:
    """Seconds per step and round: every round runs each step once, the order rotated by one each
    round, so no step is always first (after the others' allocations) or always last."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    names, times = list(steps), {name: [] for name in steps}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(_timed(steps[name], device))
    return times


def ratio_summary(num: list[float], den: list[float]) -> dict[str, Any]:
    """Median of the per-round ratios num / den, their quartiles and range."""
    ratios = sorted(a / b for a, b in zip(num, den))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"median": round(statistics.median(ratios), 3), "iqr": [round(q1, 3), round(q3, 3)],
            "range": [round(ratios[0], 3), round(ratios[-1], 3)], "rounds": len(ratios)}


def _breakdown(tr: Learner, batch: Batch, repeats: int) -> dict[str, float]:
    """Time the three pieces DDFP adds to a mean-teacher step, each as the step runs it."""
    m, cfg, dev, b = tr.models, tr.cfg, tr.device, batch.img_x.shape[0]
    with torch.no_grad():
        t_feats = m.teacher(torch.cat([batch.img_x, batch.img_u_w])).feats
        v = m.student.encode(torch.cat([batch.img_x, batch.img_u_s]))
        h = m.student.first_conv(v)  # the clean pass computes it anyway
    confident = downsample_labels(torch.zeros_like(batch.mask_x), v.shape[-2:]) != IGNORE_INDEX
    eps, mask = cfg.perturb.eps, cfg.perturb.mask
    delta = density_descending_delta(m.student, m.flow, v[b:], confident, eps, mask, first=h[b:]).delta

    def fit_flow() -> None:
        tr.opt_flow.zero_grad(set_to_none=True)
        flow_step(m.flow, t_feats, batch.mask_x, batch.ignore_u, cfg)[0].backward()
        tr.opt_flow.step()

    def extra_pass() -> None:
        # The B perturbed maps through the classifier (conv1 of delta, then the aux BN), forward + backward.
        h_u = h[b:].detach().requires_grad_()
        m.student.classify_from(m.student.shift(h_u, delta), n_main=0)[0].sum().backward()

    return {
        "flow_fit_s": _median_time(fit_flow, repeats, 1, dev),
        "perturbation_s": _median_time(
            lambda: density_descending_delta(m.student, m.flow, v[b:], confident, eps, mask, first=h[b:]),
            repeats, 1, dev),
        "extra_classifier_pass_s": _median_time(extra_pass, repeats, 1, dev),
    }


def _setting(cfg: Config) -> tuple[Learner, Batch, dict[str, Any]]:
    """The learner and a random batch of a setting, and what the setting is."""
    cfg = replace(cfg, {"train.conf_thresh": 0.0, "train.max_iters": 10**6, "model.pretrained": False})
    device = SINGLE.device(cfg.run.device)
    about: dict[str, Any] = {"backbone": cfg.model.backbone, "crop": cfg.data.crop_size,
                             "batch": f"{cfg.train.batch_size}+{cfg.train.batch_size}",
                             "flow_samples": cfg.flow.num_samples, "device": str(device),
                             "threads": torch.get_num_threads(), "precision": cfg.train.precision,
                             "channels_last": cfg.run.channels_last}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        about["gpu"] = torch.cuda.get_device_name(device)
    # An epoch of train.max_iters (10^6): the timed iterations run at the schedule's start.
    tr = Learner(cfg, device, iters_per_epoch=cfg.train.max_iters)
    b = random_batch(cfg, cfg.spec.num_classes, device, torch.Generator().manual_seed(0))
    samples = {"img": b.img_x, "mask": b.mask_x, "img_w": b.img_u_w, "img_s": b.img_u_s, "img_s2": b.img_u_s2,
               "ignore": b.ignore_u}
    return tr, Batch.from_samples(samples, samples, tr.images, lambda x: x), about


def _steps(tr: Learner, batch: Batch) -> dict[str, Callable[[], Any]]:
    """One training iteration per variant, as the trainer runs most iterations: without the
    perturbation diagnostics, which it computes only on the iterations it logs (timed apart)."""
    runs = variants(tr.cfg)
    steps = {name: (lambda v=v: run_variant(tr, v, batch)) for name, v in runs.items()}
    steps["ddfp_logged_iteration"] = lambda: run_variant(tr, runs["ddfp"], batch, diagnostics=True)
    return steps


def bench_setting(cfg: Config, repeats: int) -> dict[str, Any]:
    tr, batch, out = _setting(cfg)
    ddfp_cfg = variants(tr.cfg)["ddfp"].cfg  # the breakdown times DDFP's pieces
    times = paired_rounds(_steps(tr, batch), repeats, 2, tr.device)
    for name, seconds in times.items():
        out[f"{name}_s"] = round(statistics.median(seconds), 4)
    over_mt = {f"{name}_over_{REFERENCE}": ratio_summary(times[name], times[REFERENCE])
               for name in VARIANTS if name != REFERENCE}
    ratios = {**over_mt, "perturbation_overhead": ratio_summary(times["ddfp"], times["ddfp_flow_only"]),
              "flow_fit_overhead": ratio_summary(times["ddfp_flow_only"], times["mean_teacher"])}
    out.update({k: r["median"] for k, r in ratios.items()}, ratios=ratios)
    tr.cfg = ddfp_cfg
    with tr.autocast():
        out["breakdown"] = {k: round(v, 4) for k, v in _breakdown(tr, batch, repeats).items()}
    if tr.device.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(tr.device) / 2**30, 2)
        out["step_host_syncs"] = _check_syncs(tr, batch)
        out["projected_pascal_92"] = _pascal_projection(out, tr.cfg.train.batch_size)
    return out


def profile_setting(cfg: Config, iterations: int) -> dict[str, Any]:
    """Milliseconds per iteration by part of the step (pipeline.evidence.profile_step), for mean
    teacher, the flow-fitted step and DDFP, and each one's difference from mean teacher."""
    tr, batch, out = _setting(cfg)
    steps = _steps(tr, batch)
    out.update(profile_steps({k: steps[k] for k in ("mean_teacher", "ddfp_flow_only", "ddfp")}, iterations, tr.device))
    return out


def projected_hours(step_s: dict[str, float], schedule: Config, iters_per_epoch: int) -> float:
    """Training time of a whole run of `schedule` (its epochs and phases) at these step times: each
    epoch at its phase's step, one iteration in run.log_every with the diagnostics. Evaluation,
    checkpoints and data loading beyond the step are not in it."""
    seconds = 0.0
    for epoch in range(schedule.train.epochs):
        phase = phase_at(epoch, schedule)
        name = "ddfp" if phase.perturb else "ddfp_flow_only" if phase.fit_flow else "mean_teacher" if phase.semi \
            else "supervised"
        step = step_s[name]
        if phase.perturb:
            step += (step_s["ddfp_logged_iteration"] - step) / schedule.run.log_every
        seconds += iters_per_epoch * step
    return seconds / 3600


def _pascal_projection(out: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The pascal profile's 92-label run on this one device, at this setting's batch per step."""
    schedule = load(None, "pascal")
    iters = PASCAL_UNLABELLED_AT_92 // batch_size
    step_s = {k[:-2]: v for k, v in out.items() if k.endswith("_s") and isinstance(v, float)}
    return {"epochs": schedule.train.epochs, "iters_per_epoch": iters,
            "hours": round(projected_hours(step_s, schedule, iters), 2)}


def _check_syncs(tr: Learner, batch: Batch) -> str:
    """Run one DDFP step under CUDA's sync debug mode: "none", or the first host sync it raised on."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        with tr.autocast():
            ddfp = variants(tr.cfg)["ddfp"]
            train_step(tr.models, batch, ddfp.phase, ddfp.cfg, diagnostics=False)
        return "none"
    except RuntimeError as err:
        return str(err).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def run_bench(cfg: Config, what: str, settings: str, repeats: int) -> dict[str, Any]:
    names = [s.strip() for s in settings.split(",") if s.strip()]
    unknown = set(names) - set(SETTINGS)
    if unknown:
        raise ValueError(f"--settings: unknown setting(s) {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    gpu = [n for n in names if n.startswith("gpu")]
    if gpu and not torch.cuda.is_available():
        raise ValueError(f"--settings {','.join(gpu)}: no CUDA device is visible")
    run = profile_setting if what == "profile" else bench_setting
    result: dict[str, Any] = {}
    for name in names:
        result[name] = run(replace(cfg, SETTINGS[name]), repeats)
    if what == "step":
        headline = result.get("paper") or result[names[0]]
        result["ddfp_over_mean_teacher"] = headline["ddfp_over_mean_teacher"]
        result["perturbation_overhead"] = headline["perturbation_overhead"]
    return result
