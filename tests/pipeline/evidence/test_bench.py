import subprocess
import sys

from pipeline import params
from pipeline.evidence.bench import run_bench


def test_bench_step_reports_every_method_and_the_ratios():
    cfg = params.replace(params.load(profile="smoke"), {"data.crop_size": 32})
    out = run_bench(cfg, "step", "demo", repeats=1)
    demo = out["demo"]
    for key in ("supervised_s", "mean_teacher_s", "ddfp_flow_only_s", "ddfp_s", "ddfp_logged_iteration_s"):
        assert demo[key] > 0
    assert out["ddfp_over_mean_teacher"] == round(demo["ddfp_s"] / demo["mean_teacher_s"], 3)
    assert set(demo["breakdown"]) == {"flow_fit_s", "perturbation_s", "extra_classifier_pass_s"}


def test_help_lists_the_subcommands():
    text = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True).stdout
    for name in ("download", "splits", "weights", "train", "evaluate", "report", "submit", "sweep", "bench"):
        assert name in text
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "step", "--settings", "gpu"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--settings" in res.stderr
