"""System metrics of a training run, sampled by MLflow's own SystemMetricsMonitor.

The monitor samples CPU utilisation, memory, disk and network (psutil) and, where an NVIDIA driver
answers, each GPU's utilisation and memory (pynvml, from nvidia-ml-py), and logs them as `system/...`
metrics of the run id it is handed: the tracker's run, created with MlflowClient and not through
`mlflow.start_run` (which would attach one itself). It runs in a daemon thread of this process (rank
0 only, so a multi-node run shows the first node) and never stops training: a monitor that cannot
start is one warning. During a tracking outage the thread ends at its first failed call and its
samples are not spooled; the tracker starts a new one, continuing the system/ steps, once the
server answers again.
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm

from pipeline.secrets import first_line, redact
from pipeline.sections import TrackingConfig


def _quiet_outage(record: logging.LogRecord) -> bool:
    """Drop the monitor's report of a failed call to the store, which ends its thread: the tracker
    warns once per outage itself, and starts a new monitor when the server answers again."""
    return not record.getMessage().startswith(("Failed to get mlflow run", "Failed to log system metrics"))


def _quiet_mlflow_monitor() -> None:
    # MLflow reports each start and stop of a monitor (and a machine without GPUs) at INFO, lines
    # between the training's own; its other warnings (a failed GPU reading) still show. Set after
    # importing mlflow, whose logging set-up resets the levels of its loggers.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics.system_metrics_monitor").addFilter(_quiet_outage)  # once: a set


def sampling_interval(tracking: TrackingConfig) -> float | None:
    """Seconds between samples, or None when system metrics are off."""
    return tracking.system_metrics_interval_s if tracking.system_metrics else None


class SystemMetrics:
    """At most one monitor of one run at a time; every method is a no-op until `interval_s` is set."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.interval_s: float | None = None  # set by the tracker's start, from the run's config
        self._monitor: Any = None
        self._warned = False

    def start(self, run_id: str | None, resume: bool) -> None:
        """Sample into run_id from now on, unless a monitor already runs (resume: its system/ steps
        go on after those an earlier process or monitor logged in the same run)."""
        if self.interval_s is None or run_id is None or self._monitor is not None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            _quiet_mlflow_monitor()
            monitor = SystemMetricsMonitor(run_id, sampling_interval=self.interval_s, resume_logging=resume,
                                           tracking_uri=self.uri)
            monitor.start()
        except Exception as err:  # noqa: BLE001 - system metrics are never allowed to stop training
            self._warn(err)
            return
        self._monitor = monitor

    def restart(self, run_id: str | None) -> None:
        """After an outage: the old thread may have ended at a failed call (or the run may exist only
        now, sent from the spool), so a new monitor goes on in the run."""
        if self.interval_s is not None:
            self._halt()
            self.start(run_id, resume=True)

    def stop(self) -> None:
        """The run ends: stop sampling, send what is still batched (so it lands while the run is
        RUNNING), and start no monitor again until the next start."""
        self._halt()
        self.interval_s = None

    def _halt(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
        except Exception as err:  # noqa: BLE001 - as in start
            self._warn(err)

    def _warn(self, err: Exception) -> None:
        if not self._warned:
            self._warned = True
            tqdm.write(f"warning: MLflow system metrics for {redact(self.uri)} failed ({first_line(err)}); "
                       "training goes on without them")


__all__ = ["SystemMetrics", "sampling_interval"]
