"""`ddfp report`: the table of exactly the runs the evaluate stage wrote to metrics/, each with its own
configuration; a missing split is named; MLflow is never read."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline import params
from pipeline.stages.evaluate import best_evaluation, run_evaluate
from pipeline.stages.report import write_report
from pipeline.train.fit import fit
from tests.helpers.project import ROOT
from tests.helpers.smoke import paths
from tests.helpers.smoke import tiny_cfg as untracked_cfg


def smoke(**overrides):
    return params.replace(params.load(profile="smoke"), {"tracking.enabled": True, **overrides})




def write_evaluated(metrics_dir, split, run_id, eps, miou, seed=2, method="ddfp", best=None):
    """metrics/<split>/<method>.json and .run.json in the format run_evaluate writes (checked against it below);
    best: (val mIoU, epoch) of the best evaluation over training, else the last one (miou, epoch 2)."""
    iou = {"background": miou + 1, "stripes": miou - 1}
    best_miou, best_epoch = best or (miou, 2)
    (metrics_dir / split).mkdir(parents=True, exist_ok=True)
    (metrics_dir / split / f"{method}.json").write_text(json.dumps({
        "val_miou": miou, "reported_model": "teacher", "method": method, "split": split, "dataset": "synthetic",
        "seed": seed, "iterations": 40, "run_id": run_id, "val_miou_teacher": miou,
        "val_miou_best": best_miou, "best_epoch": best_epoch, "per_class_iou": iou}))
    (metrics_dir / split / f"{method}.run.json").write_text(json.dumps({
        "run_id": run_id, "split": split, "iterations": 40, "reported_model": "teacher",
        "config": {"data.dataset": "synthetic", "profile": "smoke", "train.method": method, "train.seed": seed,
                   "model.backbone": "mobilenet_v2", "perturb.eps": eps, "train.conf_thresh": 0.95},
        "history": [{"iteration": 20, "loss": 1.5}, {"iteration": 40, "loss": 1.1}],
        "evals": [{"epoch": 1, "iteration": 20, "val_miou_student": miou - 5},
                  {"epoch": 2, "iteration": 40, "val_miou_student": miou - 2, "val_miou_teacher": miou}]}))


def run_row(text, run_id):
    """The cells of the 'Runs' table row naming run_id."""
    line = next(line for line in text.splitlines() if run_id in line)
    return [c.strip() for c in line.strip("|").split("|")]


def finished_run(client, exp, eps, miou):
    tags = {"ddfp_kind": "train", "profile": "smoke", "split": "8", "method": "ddfp", "seed": "2"}
    run = client.create_run(exp, tags=tags)
    client.log_batch(run.info.run_id, metrics=[Metric("val_miou", miou, 0, 40)],
                     params=[Param("perturb.eps", str(eps))])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_the_report_shows_the_run_of_the_metrics_file_not_the_newest_mlflow_run(tmp_path, monkeypatch):
    # The pipeline's eps=4 run, then a sensitivity run at eps=16 of the same split, method and seed,
    # finished later in the same store: the report is what the evaluate stage wrote, the eps=4 run.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("synthetic")
    pipeline_run = finished_run(client, exp, 4.0, 27.68)
    finished_run(client, exp, 16.0, 11.11)
    write_evaluated(tmp_path / "metrics", "8", pipeline_run, eps=4.0, miou=27.68)
    # The current configuration says eps 1: neither run's value may be printed as theirs.
    out = write_report(smoke(**{"data.splits": ["8"], "methods": ["ddfp"], "perturb.eps": 1.0}), tmp_path / "metrics",
                       tmp_path / "reports" / "results.md")
    text = out.read_text()
    assert "27.68" in text and "11.11" not in text, text
    row = run_row(text, pipeline_run)
    assert row[:5] == ["8", "ddfp", "2", "4.0", "0.95"], row
    assert "eps 1.0" not in text
    assert {"miou_vs_labels.png", "class_iou.png", "training_curves.png"} <= {p.name for p in out.parent.iterdir()}


def test_a_missing_split_is_named_and_the_report_is_still_written(tmp_path):
    write_evaluated(tmp_path / "metrics", "8", "run8", eps=4.0, miou=30.0)
    (tmp_path / "metrics" / "32").mkdir()
    (tmp_path / "metrics" / "32" / "ddfp.json").write_text("{}")  # evaluated before .run.json existed: incomplete
    cfg = smoke(**{"data.splits": ["8", "16", "32"], "methods": ["ddfp"]})
    text = write_report(cfg, tmp_path / "metrics", tmp_path / "reports" / "results.md").read_text()
    assert run_row(text, "run8")[0] == "8"
    missing = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(missing) == 2, text
    assert "16/ddfp.json" in missing[0] and "dvc repro evaluate@16-ddfp" in missing[0]
    assert "32/ddfp.run.json" in missing[1] and "ddfp.json," not in missing[1]
    assert "dvc repro evaluate@32-ddfp" in missing[1]


def test_nothing_evaluated_yet_still_writes_a_report_naming_every_split_and_method(tmp_path):
    cfg = smoke(**{"data.splits": ["8", "16"]})
    text = write_report(cfg, tmp_path / "metrics", tmp_path / "reports" / "results.md").read_text()
    for stage in ("8-supervised", "8-ddfp", "16-supervised", "16-ddfp"):
        assert f"dvc repro evaluate@{stage}`" in text, text


def table_rows(text):
    """The split x method table of results.md: header cells, then {labels: cells}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    end = next(i for i, row in enumerate(cells) if i > 1 and not row[0].isdigit())
    return cells[0], {row[0]: row[1:] for row in cells[2:end]}


def test_the_report_has_each_method_per_split_and_the_gain_of_ddfp(tmp_path):
    metrics = tmp_path / "metrics"
    write_evaluated(metrics, "8", "sup8", eps=4.0, miou=30.0, method="supervised")
    write_evaluated(metrics, "8", "ddfp8", eps=4.0, miou=34.5)
    write_evaluated(metrics, "16", "sup16", eps=4.0, miou=41.25, method="supervised")
    text = write_report(smoke(**{"data.splits": ["8", "16"]}), metrics, tmp_path / "reports" / "results.md").read_text()
    header, rows = table_rows(text)
    assert header == ["labels", "supervised", "ddfp", "ddfp - supervised"], text
    assert rows == {"8": ["30.00", "34.50", "+4.50"], "16": ["41.25", "", ""]}, text
    assert [run_row(text, r)[1] for r in ("sup8", "ddfp8", "sup16")] == ["supervised", "ddfp", "supervised"]
    assert "dvc repro evaluate@16-ddfp" in text and "evaluate@8-" not in text


def test_the_report_shows_the_last_and_the_best_evaluation_with_the_papers_protocol_named(tmp_path):
    # The paper (like UniMatch) reports the best evaluation over training; the pipeline reports the last.
    metrics = tmp_path / "metrics"
    write_evaluated(metrics, "8", "ddfp8", eps=4.0, miou=34.5, best=(36.25, 1))
    text = write_report(smoke(**{"data.splits": ["8"], "methods": ["ddfp"]}), metrics,
                        tmp_path / "reports" / "results.md").read_text()
    assert table_rows(text)[1] == {"8": ["34.50"]}, text  # the first table: the last evaluation
    best = text[text.index("## Best evaluation over training"):]
    assert table_rows(best)[1] == {"8": ["36.25"]}, best
    assert run_row(text, "ddfp8")[-2:] == ["36.25 (epoch 1)", "ddfp8"], text


def test_the_best_evaluation_is_over_training_and_the_final_model():
    evals = [{"epoch": 1, "val_miou_student": 20.0}, {"epoch": 2, "val_miou_student": 35.0, "val_miou_teacher": 31.0},
             {"epoch": 3, "val_miou_student": 33.0, "val_miou_teacher": 36.5}]
    assert best_evaluation(evals, "teacher", final_miou=36.0, final_epoch=4) == (36.5, 3)
    assert best_evaluation(evals, "student", final_miou=35.0, final_epoch=4) == (35.0, 2)  # a tie: the first
    assert best_evaluation(evals, "teacher", final_miou=40.0, final_epoch=4) == (40.0, 4)


def test_the_summary_prints_the_table_and_where_the_outputs_are(tmp_path):
    # The real command, as `make demo` runs it, in a project folder of its own.
    write_evaluated(tmp_path / "metrics", "8", "sup8", eps=4.0, miou=30.0, method="supervised")
    write_evaluated(tmp_path / "metrics", "8", "ddfp8", eps=4.0, miou=33.0)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "summary", "--profile", "smoke",
                          "--set", "data.splits=[8]"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    row = next(line for line in out.splitlines() if line.startswith("| 8"))
    assert [c.strip() for c in row.strip("|").split("|")] == ["8", "30.00", "33.00", "+3.00"], out
    assert "reports/results.md" in out and "reports/miou_vs_labels.png" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in out, out


@pytest.mark.slow
def test_two_evaluated_runs_with_different_eps_each_show_their_own(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_ids = {}
    for eps in (4.0, 16.0):
        cfg = untracked_cfg(**{"tracking.enabled": True, "train.max_iters": 4, "perturb.eps": eps})
        out = tmp_path / f"run_eps{eps:g}"
        run_ids[eps] = fit(cfg, paths(tiny_data, out), progress=False).run_id
        run_evaluate(cfg, out / "last.pt", tiny_data / "dataset", tiny_data / "splits" / "8",
                     tmp_path / f"metrics_eps{eps:g}" / "8" / "ddfp.json")
    real, fixture = tmp_path / "metrics_eps4", tmp_path / "fixture"
    write_evaluated(fixture, "8", "x", eps=4.0, miou=1.0)
    m, f = (json.loads((d / "8" / "ddfp.json").read_text()) for d in (real, fixture))
    # 4 iterations end before the first epoch: the final evaluation is the only one, the best too.
    assert json.loads((real / "8" / "ddfp.run.json").read_text())["evals"] == []
    assert (m["val_miou_best"], m["best_epoch"]) == (m["val_miou"], 0)
    assert m.keys() == f.keys() and m["per_class_iou"].keys() == {"background", "stripes"} | m["per_class_iou"].keys()
    run = json.loads((real / "8" / "ddfp.run.json").read_text())
    assert run["run_id"] == run_ids[4.0] and run["iterations"] == 4 and run["config"]["perturb.eps"] == 4.0
    assert [set(r) for r in run["history"]] == [{"iteration", "loss"}] * 2
    like = json.loads((fixture / "8" / "ddfp.run.json").read_text())
    assert run.keys() == like.keys() and run["config"].keys() == like["config"].keys()
    current = untracked_cfg(**{"perturb.eps": 1.0, "data.splits": ["8"], "methods": ["ddfp"]})
    for eps, run_id in run_ids.items():
        text = write_report(current, tmp_path / f"metrics_eps{eps:g}", tmp_path / f"r{eps:g}" / "results.md").read_text()
        assert run_row(text, run_id)[3] == str(eps), text
        assert (tmp_path / f"r{eps:g}" / "training_curves.png").stat().st_size > 5_000



def test_the_top_level_plots_get_every_run_s_curve_and_each_method_s_labels_line(tmp_path):
    # Rows of dvc.yaml's top-level plots: one `series` per run (curves) and per method (mIoU vs labels).
    for split, miou in (("8", 30.0), ("16", 40.0)):
        write_evaluated(tmp_path / "metrics", split, f"run{split}", eps=4.0, miou=miou)
        write_evaluated(tmp_path / "metrics", split, f"sup{split}", eps=4.0, miou=miou - 10, method="supervised")
    cfg = smoke(**{"data.splits": ["8", "16"]})
    out = write_report(cfg, tmp_path / "metrics", tmp_path / "reports" / "results.md")
    val = json.loads((out.parent / "plots" / "val_miou.json").read_text())
    # The reported model's evaluations only: the teacher's, which the fixture's first evaluation lacks.
    assert {(r["series"], r["iteration"], r["val_miou"]) for r in val} == {
        ("ddfp / 8", 40, 30.0), ("supervised / 8", 40, 20.0), ("ddfp / 16", 40, 40.0), ("supervised / 16", 40, 30.0)}
    labels = json.loads((out.parent / "plots" / "miou_vs_labels.json").read_text())
    assert sorted((r["series"], r["labels"], r["val_miou"]) for r in labels) == [
        ("ddfp", 8, 30.0), ("ddfp", 16, 40.0), ("supervised", 8, 20.0), ("supervised", 16, 30.0)]
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    drawn = {f for p in plots for spec in p.values() for f in spec["y"]}
    assert drawn == {"reports/plots/val_miou.json", "reports/plots/miou_vs_labels.json"}
    assert all(spec["template"] == "series" for p in plots for spec in p.values())
    assert (ROOT / ".dvc" / "plots" / "series.json").is_file()
