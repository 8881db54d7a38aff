"""MLflow tracking: a real `mlflow server`, real sqlite stores, the report, and secret redaction."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import params
from pipeline.evidence.mlflow_picture import (
    chromium,
    missing_browser,
    scroll_metrics_to_val_miou,
    wait_for_text,
)
from pipeline.secrets import redact
from pipeline.stages.evaluate import run_evaluate
from pipeline.stages.report import markdown_table, summarise, write_report
from pipeline.tracking.identity import dvc_hashes, group_hash
from pipeline.tracking.spool import Spool
from pipeline.tracking.tracker import MlflowTracker, NullTracker, Tracker
from pipeline.train.fit import fit
from tests.helpers.mlflow_server import free_port
from tests.helpers.project import ROOT
from tests.helpers.services import require_service
from tests.helpers.smoke import paths
from tests.helpers.smoke import tracked_cfg as tiny_cfg


def runs_named(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("synthetic")
    return client, client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")


def test_redact_hides_url_passwords_only():
    assert redact("postgresql+psycopg2://bob:pa55@10.0.0.1:5432/optuna") == "postgresql+psycopg2://bob:***@10.0.0.1:5432/optuna"
    assert redact("see https://u:p@h/x and sqlite:///a.db") == "see https://u:***@h/x and sqlite:///a.db"
    assert redact("http://host:8080/path") == "http://host:8080/path"


def test_dvc_hashes_come_from_dvc_lock(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  splits:\n    cmd: x\n    outs:\n    - path: data/splits\n      md5: abc.dir\n")
    hashes = dvc_hashes(tmp_path, {"splits": tmp_path / "data/splits/16", "data": tmp_path / "data/dataset"})
    assert hashes == {"dvc_md5.splits": "abc.dir", "dvc_md5.data": "untracked"}


def test_both_trackers_implement_the_protocol_and_end_any_run_of_their_store(tmp_path):
    members = [name for name, value in vars(Tracker).items() if callable(value) and not name.startswith("_")]
    assert {"start", "attach", "finish"} <= set(members)
    assert all(callable(getattr(cls, name)) for cls in (NullTracker, MlflowTracker) for name in members)
    # A sweep ends runs it did not start (a dead worker's trial, its parent) through the public API.
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment_id("sweeps")
    assert tracker.experiment_id("sweeps") == exp
    run_id = tracker.client.create_run(exp).info.run_id
    tracker.attach(run_id)
    tracker.set_tags({"trial_state": "FAIL"})
    tracker.terminate(run_id, "KILLED", 1234)
    run = tracker.client.get_run(run_id)
    assert (run.info.status, run.info.end_time, run.data.tags["trial_state"]) == ("KILLED", 1234, "FAIL")


def test_seeds_share_a_parent_group_and_eps_does_not():
    cfg = params.load(profile="smoke")
    assert group_hash(cfg) == group_hash(params.replace(cfg, {"train.seed": 7}))
    assert group_hash(cfg) != group_hash(params.replace(cfg, {"perturb.eps": 2.0}))


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_training_logs_params_metrics_and_artifacts_to_a_server(mlflow_server, tracking_to, tiny_data, tmp_path):
    tracking_to(mlflow_server.url)
    cfg = tiny_cfg(**{"train.max_iters": 12, "run.eval_every": 1})
    summary = fit(cfg, paths(tiny_data, tmp_path / "run"), progress=False)
    run_evaluate(cfg, tmp_path / "run" / "last.pt", tiny_data / "dataset", tiny_data / "splits" / "8",
                 tmp_path / "metrics" / "8.json")
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "synthetic-8-ddfp-seed0"
    p = run.data.params
    assert (p["split"], p["perturb.eps"], p["train.method"], p["world_size"], p["global_batch"]) == \
        ("8", "4.0", "ddfp", "1", "4")
    assert {"git_commit", "dvc_md5.data", "dvc_md5.splits", "resolved_device", "resolved_precision"} <= p.keys()
    assert {"loss", "lr", "flow_bpd", "confident_ratio", "val_miou", "val_miou_student"} <= run.data.metrics.keys()
    assert any(k.startswith("final_iou_teacher/") for k in run.data.metrics)
    assert (run.data.tags["split"], run.data.tags["method"], run.data.tags["profile"]) == ("8", "ddfp", "smoke")
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["ddfp_kind"] == "parent"
    artifacts = {a.path for d in ("", "figures", "overlays") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"config.yaml", "figures/confusion_teacher.png", "overlays/val_00.png"} <= artifacts
    found = client_frame(mlflow_server.url)
    assert summary.run_id in set(found["run_id"])


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_the_reported_model_is_logged_loadable_and_registered(mlflow_server, tracking_to, tiny_data, tmp_path):
    import mlflow.pytorch

    from ddfp.metrics import confusion_matrix
    from pipeline.train.loaders import val_loader

    tracking_to(mlflow_server.url)
    cfg = tiny_cfg(**{"train.max_iters": 12, "tracking.register_model": True, "train.seed": 7})
    summary = fit(cfg, paths(tiny_data, tmp_path / "run"), progress=False)
    out = tmp_path / "metrics" / "8.json"
    metrics = run_evaluate(cfg, tmp_path / "run" / "last.pt", tiny_data / "dataset", tiny_data / "splits" / "8", out)
    uri = f"runs:/{summary.run_id}/model"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, -1, -1)
    model = mlflow.pytorch.load_model(uri)
    assert sum(p.numel() for p in model.parameters()) < 2 * 10**7  # the network, not the training state
    # The logged model predicts what `ddfp evaluate` measured: the confusion matrix of its argmax over
    # the validation list is the evaluation's, for the reported model (the teacher).
    n = cfg.spec.num_classes
    cm = torch.zeros(n, n, dtype=torch.long)
    with torch.no_grad():
        for batch in val_loader(cfg, tiny_data / "dataset", tiny_data / "splits" / "8"):
            cm += confusion_matrix(protocol_prediction(model, batch["img"], cfg), batch["mask"], n)
    assert metrics["reported_model"] == "teacher"
    assert cm.tolist() == json.loads(out.with_suffix(".confusion.json").read_text())["teacher"]
    client = MlflowClient(mlflow_server.url)
    [version] = client.search_model_versions(f"name = 'ddfp-synthetic-ddfp' and run_id = '{summary.run_id}'")
    assert version.source == uri and (version.tags["split"], version.tags["seed"]) == ("8", "7")


def protocol_prediction(model, images, cfg):
    """The evaluation protocol (whole image or sliding windows) around the logged logits model."""
    from ddfp.inference import predict

    class Segmenter(torch.nn.Module):  # the logged model returns the logits tensor itself
        def __init__(self, logits_model):
            super().__init__()
            self.logits_model = logits_model

        def forward(self, x):
            return types.SimpleNamespace(logits=self.logits_model(x))

    return predict(Segmenter(model), images, cfg.eval_protocol)


def client_frame(uri: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["synthetic"], filter_string="params.split = '8'")


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_a_killed_and_resumed_training_keeps_one_run(mlflow_server, tiny_data, tmp_path):
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("ddfp")), "train", "--profile", "smoke",
           "--set", "model.pretrained=false", "--set", "data.crop_size=32", "--set", "run.ckpt_every=2",
           "--set", "train.max_iters=14", "--set", "train.seed=11", "--data", str(tiny_data / "dataset"),
           "--split-dir", str(tiny_data / "splits" / "8"), "--out", str(out)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed" in done.stdout + done.stderr
    client, runs = runs_named(mlflow_server.url, "synthetic-8-ddfp-seed11")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert steps and max(steps) == 14


@pytest.mark.slow
def test_training_finishes_with_one_warning_when_the_server_is_down(tiny_data, tmp_path, capsys):
    cfg = tiny_cfg(**{"train.max_iters": 4, "tracking.uri": f"http://127.0.0.1:{free_port()}"})
    summary = fit(cfg, paths(tiny_data, tmp_path / "run"), progress=False)
    assert summary.iterations == 4 and summary.run_id is None
    err = capsys.readouterr()
    assert (err.out + err.err).count("MLflow tracking at http://127.0.0.1") == 1
    assert (tmp_path / "run" / "train_log.json").is_file()


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_a_server_blink_mid_run_loses_no_metrics(mlflow_server, tracking_to, tiny_data, tmp_path, capsys):
    # The real server goes away after the first evaluation and comes back (same port, same store)
    # after the second: what training logged in between reaches MLflow, with one warning.
    # Batches of 8: 5 iterations an epoch, evaluations at 5 and 10; the supervised method is the
    # cheapest step (tracking does not depend on it).
    tracking_to(mlflow_server.url)
    cfg = tiny_cfg(**{"train.batch_size": 8, "train.max_iters": 10, "train.seed": 31, "run.ckpt_every": 100,
                      "train.method": "supervised"})

    def blink(epoch: int, miou: float) -> None:
        if epoch == 1:
            mlflow_server.stop()
        elif epoch == 2:
            mlflow_server.start()

    try:
        summary = fit(cfg, paths(tiny_data, tmp_path / "run"), progress=False, on_eval=blink)
    finally:
        if mlflow_server.proc.poll() is not None:
            mlflow_server.start()
    out = capsys.readouterr()
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4, 6, 8, 10]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_miou_student")] == [5, 10]
    assert (out.out + out.err).count("warning: MLflow tracking") == 1, out.out + out.err
    assert "answers again" in out.out + out.err
    assert not (tmp_path / "run" / "tracking_pending.jsonl").exists()


def test_the_spool_survives_a_kill_in_the_middle_of_a_line(tmp_path):
    spool = Spool(tmp_path)
    spool.append({"op": "metrics", "step": 1})
    spool.append({"op": "metrics", "step": 2})
    with open(tmp_path / "tracking_pending.jsonl", "a") as fh:
        fh.write('{"op": "metr')  # what a SIGKILL during the third write leaves
    assert [e["step"] for e in spool.read()] == [1, 2]
    reopened = Spool(tmp_path)  # the next process: its entries start on a line of their own
    reopened.append({"op": "metrics", "step": 3})
    assert [e["step"] for e in reopened.read()] == [1, 2, 3]
    spool.replace([])
    assert not (tmp_path / "tracking_pending.jsonl").exists()


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_a_training_that_never_reached_the_server_is_sent_by_evaluate(mlflow_server, tiny_data, tmp_path):
    cfg = tiny_cfg(**{"train.max_iters": 4, "train.seed": 32, "tracking.uri": f"http://127.0.0.1:{free_port()}"})
    run_dir = tmp_path / "run"
    assert fit(cfg, paths(tiny_data, run_dir), progress=False).run_id is None
    assert (run_dir / "tracking_pending.jsonl").is_file()
    # The server answers now (in a real outage: the same URL, back up).
    back = params.replace(cfg, {"tracking.uri": mlflow_server.url})
    metrics = run_evaluate(back, run_dir / "last.pt", tiny_data / "dataset", tiny_data / "splits" / "8",
                           tmp_path / "metrics" / "8.json")
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(metrics["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "synthetic-8-ddfp-seed32"
    assert run.data.params["perturb.eps"] == "4.0" and run.data.tags["split"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4]
    assert "val_miou" in run.data.metrics
    assert not (run_dir / "tracking_pending.jsonl").exists()


@pytest.mark.slow
def test_a_password_in_the_config_never_reaches_the_store_or_reports(tiny_data, tmp_path, tracking_to):
    secret = "hunter2-not-for-logs"
    store = tmp_path / "store"
    store.mkdir()
    tracking_to(f"sqlite:///{store / 'mlflow.db'}")
    cfg = tiny_cfg(**{"train.max_iters": 4, "download.mirror": f"https://alice:{secret}@mirror.example.org/voc"})
    fit(cfg, paths(tiny_data, tmp_path / "run"), progress=False)
    run_evaluate(cfg, tmp_path / "run" / "last.pt", tiny_data / "dataset", tiny_data / "splits" / "8",
                 tmp_path / "metrics" / "8" / "ddfp.json")
    write_report(params.replace(cfg, {"data.splits": ["8"]}), tmp_path / "metrics", tmp_path / "reports" / "r.md")
    client, runs = runs_named(f"sqlite:///{store / 'mlflow.db'}", "synthetic-8-ddfp-seed0")
    assert runs[0].data.params["download.mirror"] == "https://alice:***@mirror.example.org/voc"
    files = [f for d in (store, tmp_path / "reports", tmp_path / "metrics") for f in d.rglob("*") if f.is_file()]
    assert len(files) > 4
    leaks = [f for f in files if secret.encode() in f.read_bytes()]
    assert not leaks


def test_report_table_has_mean_and_std_over_seeds_and_the_paper_on_pascal():
    cfg = params.load(profile="pascal")
    frame = pd.DataFrame({"split": ["92", "92", "92", "183"], "method": ["ddfp", "ddfp", "supervised", "ddfp"],
                          "seed": [1, 2, 1, 1], "val_miou": [70.0, 72.0, 50.0, 76.0]})
    summary = summarise(frame, cfg)
    row = summary[(summary.split == "92") & (summary.method == "ddfp")].iloc[0]
    assert (row["mean"], round(row["std"], 4), row["seeds"]) == (71.0, 1.4142, 2)
    table = markdown_table(summary, cfg)
    assert "71.00 ± 1.41 (2)" in table and "75.00" in table and "45.77" in table and "DDFP (paper)" in table
    assert table.index("92") < table.index("183")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.mlflow_server
def test_the_mlflow_ui_compares_the_splits_side_by_side(mlflow_server, tracking_to, tiny_data, tmp_path):
    tracking_to(mlflow_server.url)
    cfg = tiny_cfg(**{"train.max_iters": 6, "train.seed": 21})
    run_ids, mious = [], []
    for split in ("8", "16"):
        split_dir = tiny_data / "splits" / split
        out = tmp_path / split
        from pipeline.train.trainer import RunPaths

        run_ids.append(fit(cfg, RunPaths(tiny_data / "dataset", split_dir, out), progress=False).run_id)
        mious.append(run_evaluate(cfg, out / "last.pt", tiny_data / "dataset", split_dir, out / "m.json")["val_miou"])
    exp_id = MlflowClient(mlflow_server.url).get_run(run_ids[0]).info.experiment_id
    require_service(missing_browser())
    driver = chromium()
    try:
        # The runs page nests the split runs under their parent run: check that grouping first.
        driver.get(f"{mlflow_server.url}/#/experiments/{exp_id}/runs")
        parent = MlflowClient(mlflow_server.url).get_run(run_ids[0]).data.tags["mlflow.parentRunId"]
        parent_name = MlflowClient(mlflow_server.url).get_run(parent).info.run_name
        assert parent_name in wait_for_text(driver, [parent_name])
        names = ["synthetic-8-ddfp-seed21", "synthetic-16-ddfp-seed21"]
        ids = ",".join(f'"{r}"' for r in run_ids)
        driver.get(f"{mlflow_server.url}/#/compare-runs?runs=[{ids}]&experiments=[\"{exp_id}\"]")
        body = wait_for_text(driver, ["Comparing 2 Runs", "val_miou", *names])
        assert "Comparing 2 Runs" in body and all(n in body for n in names), body[:2000]
        # Metrics table scrolled to its end, where val_miou* sort. The table is virtualised (rows
        # outside its viewport are not in the page text), hence the scroll.
        driver.find_element("css selector", "button[aria-label='Close']").click()  # the assistant panel
        driver.execute_script("arguments[0].scrollIntoView()",
                              driver.find_element("css selector", "button[aria-label='Metrics - Show diff only']"))
        names, values = scroll_metrics_to_val_miou(driver)
        assert "val_miou" in names.split("\n"), names[-500:]
        assert all(f"{m:.4g}" in values.split("\n") for m in mious), (mious, values[-500:])
        # One picture with the run names, the params and the val_miou rows: a tall window.
        driver.set_window_size(1400, 1900)
        section = driver.find_element("xpath", "//*[normalize-space(text())='Run details']")
        driver.execute_script("arguments[0].scrollIntoView()", section)
        time.sleep(1)
        shot = tmp_path / "mlflow_compare.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
