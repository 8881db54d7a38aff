"""MLflow system metrics (CPU, memory, disk, network; GPUs where a driver answers) in training runs,
sampled by MLflow's SystemMetricsMonitor into the tracker's own run, against a real `mlflow server`."""

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from pipeline import params
from pipeline.errors import ConfigError
from pipeline.tracking.identity import RunInfo
from pipeline.tracking.system_metrics import sampling_interval
from pipeline.tracking.tracker import MlflowTracker
from pipeline.train.fit import fit
from tests.helpers.mlflow_server import free_port
from tests.helpers.smoke import paths
from tests.helpers.smoke import tracked_cfg as tiny_cfg

# MLflow's shortest sensible sampling: a tiny training lasts a few seconds.
FAST = {"tracking.system_metrics_interval_s": 0.2}
EXPECTED = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/disk_usage_percentage", "system/network_receive_megabytes"}


def system_keys(client: MlflowClient, run_id: str) -> set[str]:
    return {k for k in client.get_run(run_id).data.metrics if k.startswith("system/")}


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_a_training_run_logs_system_metrics_and_none_when_they_are_off(mlflow_server, tracking_to, tiny_data,
                                                                       tmp_path):
    tracking_to(mlflow_server.url)
    client = MlflowClient(mlflow_server.url)
    on = fit(tiny_cfg(**{**FAST, "train.max_iters": 8, "train.seed": 41}), paths(tiny_data, tmp_path / "on"),
             progress=False)
    assert client.get_run(on.run_id).info.status == "FINISHED"
    assert EXPECTED <= system_keys(client, on.run_id)
    steps = [m.step for m in client.get_metric_history(on.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 2 and steps == sorted(set(steps))
    assert not monitor_threads()  # finish stopped it
    off = fit(tiny_cfg(**{**FAST, "train.max_iters": 8, "train.seed": 42, "tracking.system_metrics": False}),
              paths(tiny_data, tmp_path / "off"), progress=False)
    assert system_keys(client, off.run_id) == set() and "loss" in client.get_run(off.run_id).data.metrics


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_a_failed_training_stops_its_monitor_and_keeps_the_samples(mlflow_server, tracking_to, tiny_data, tmp_path):
    tracking_to(mlflow_server.url)

    def fail(epoch: int, miou: float) -> None:
        raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test"):
        # Batches of 8: the first evaluation (and the failure) after 5 iterations.
        fit(tiny_cfg(**{**FAST, "train.batch_size": 8, "train.max_iters": 10, "train.seed": 43,
                        "train.method": "supervised"}), paths(tiny_data, tmp_path / "run"), progress=False, on_eval=fail)
    client = MlflowClient(mlflow_server.url)
    [run] = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id],
                               "attributes.run_name = 'synthetic-8-supervised-seed43'")
    assert run.info.status == "FAILED"
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert not monitor_threads()


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_sampling_goes_on_in_the_same_run_after_an_outage(mlflow_server, tiny_data, tmp_path, capfd):
    # The server goes away under a running monitor (its thread ends at the first failed call) and
    # comes back: the tracker's next flush sends the backlog and a new monitor continues the steps.
    tracker = MlflowTracker(mlflow_server.url, tmp_path / "run")
    tracker.start(tiny_cfg(**FAST, **{"train.seed": 44}), RunInfo(split="8"))
    time.sleep(1.0)
    try:
        mlflow_server.stop()
        time.sleep(1.0)
        tracker.log_metrics({"loss": 1.0}, 1)  # the outage: kept in the spool
    finally:
        mlflow_server.start()
    back = int(time.time() * 1000)
    tracker.flush()
    time.sleep(1.5)
    tracker.finish()
    client = MlflowClient(mlflow_server.url)
    history = client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")
    steps = [m.step for m in sorted(history, key=lambda m: m.timestamp)]
    assert steps == sorted(set(steps)) and any(m.timestamp > back for m in history), steps
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [1]
    assert client.get_run(tracker.run_id).info.status == "FINISHED" and not monitor_threads()
    out = capfd.readouterr()  # MLflow's own log lines go to the process's stderr
    text = out.out + out.err
    assert text.count("warning: MLflow tracking") == 1 and "Failed to get mlflow run" not in text, text


@pytest.mark.slow
def test_system_metrics_do_not_disturb_a_training_whose_server_is_down(tiny_data, tmp_path, capfd):
    cfg = tiny_cfg(**{**FAST, "train.max_iters": 4, "tracking.uri": f"http://127.0.0.1:{free_port()}"})
    summary = fit(cfg, paths(tiny_data, tmp_path / "run"), progress=False)
    assert summary.iterations == 4 and summary.run_id is None
    out = capfd.readouterr()
    text = out.out + out.err
    assert text.count("warning: MLflow") == 1 and "Traceback" not in text and "system metrics" not in text, text
    assert not monitor_threads()


def test_the_sampling_interval_is_validated_and_off_means_no_interval():
    cfg = tiny_cfg()
    assert sampling_interval(cfg.tracking) == 10.0  # on by default, MLflow's own default interval
    assert sampling_interval(params.replace(cfg, {"tracking.system_metrics": False}).tracking) is None
    with pytest.raises(ConfigError, match="system_metrics_interval_s"):
        params.replace(cfg, {"tracking.system_metrics_interval_s": 0.01})
