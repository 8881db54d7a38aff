import subprocess
import sys

from pipeline import params
import torch

from pipeline.evidence.bench import paired_rounds, projected_hours, ratio_summary, run_bench


def test_bench_step_reports_every_method_and_the_ratios():
    cfg = params.replace(params.load(profile="smoke"), {"data.crop_size": 32})
    out = run_bench(cfg, "step", "demo", repeats=3)
    demo = out["demo"]
    for key in ("supervised_s", "mean_teacher_s", "ddfp_flow_only_s", "ddfp_s", "ddfp_logged_iteration_s"):
        assert demo[key] > 0
    for key in ("ddfp_over_mean_teacher", "perturbation_overhead", "flow_fit_overhead"):
        ratio = demo["ratios"][key]
        assert ratio["rounds"] == 3 and ratio["range"][0] <= ratio["iqr"][0] <= ratio["median"]
        assert ratio["median"] <= ratio["iqr"][1] <= ratio["range"][1] and demo[key] == ratio["median"]
    assert out["ddfp_over_mean_teacher"] == demo["ddfp_over_mean_teacher"]
    assert set(demo["breakdown"]) == {"flow_fit_s", "perturbation_s", "extra_classifier_pass_s"}


def test_rounds_interleave_the_variants_and_ratios_pair_them():
    calls: list[str] = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = paired_rounds(steps, repeats=3, warmup=1, device=torch.device("cpu"))
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert all(len(t) == 3 for t in times.values())
    # Paired: a round that is slow for both sides leaves its ratio alone.
    summary = ratio_summary([2.0, 20.0, 2.2, 1.8], [1.0, 10.0, 1.0, 1.0])
    assert summary == {"median": 2.0, "iqr": [1.95, 2.05], "range": [1.8, 2.2], "rounds": 4}


def test_bench_profile_charges_the_step_to_its_parts():
    cfg = params.replace(params.load(profile="smoke"), {"data.crop_size": 32})
    demo = run_bench(cfg, "profile", "demo", repeats=1)["demo"]
    ddfp, mt = demo["ddfp"]["cpu_ms"], demo["mean_teacher"]["cpu_ms"]
    for part in ("ddfp.teacher", "ddfp.encode", "ddfp.encode backward", "ddfp.classify", "ddfp.loss"):
        assert mt[part] > 0 and ddfp[part] > 0, part
    # Only DDFP searches and fits the flow; the search's own backward is charged to it.
    for part in ("ddfp.search", "ddfp.search backward", "ddfp.flow_fit", "ddfp.flow_fit backward"):
        assert ddfp[part] > 0 and part not in mt, part
    assert "other backward" not in ddfp  # every backward op found its forward range
    parts = {k: v for k, v in ddfp.items() if k != "total"}
    assert abs(sum(parts.values()) - ddfp["total"]) < 0.5
    assert demo["ddfp"]["cpu_ms_over_mean_teacher"]["ddfp.search"] == ddfp["ddfp.search"]


def test_help_lists_the_subcommands():
    text = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True).stdout
    for name in ("download", "splits", "weights", "train", "evaluate", "report", "submit", "sweep", "bench"):
        assert name in text
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "step", "--settings", "gpu"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--settings" in res.stderr


def test_the_projection_runs_each_epoch_at_its_phases_step():
    schedule = params.load(None, "pascal")  # 80 epochs: 1 supervised, 1 flow warm-up, 78 DDFP
    t = schedule.train
    assert (t.epochs, t.sup_only_epochs, t.flow_start_epoch, t.perturb_start_epoch) == (80, 1, 1, 2)
    steps = {"supervised": 1.0, "mean_teacher": 99.0, "ddfp_flow_only": 2.0, "ddfp": 3.0,
             "ddfp_logged_iteration": 3.0 + schedule.run.log_every}  # one logged iteration in log_every
    hours = projected_hours(steps, schedule, iters_per_epoch=360)
    assert hours == (360 * 1.0 + 360 * 2.0 + 78 * 360 * 4.0) / 3600
