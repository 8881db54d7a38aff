"""Experiment trackers. The trainer talks to this protocol only; the MLflow tracker plugs in here."""

from __future__ import annotations

from typing import Any, Protocol


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, Any], step: int) -> None: ...


class NullTracker:
    """Tracks nothing: metrics still land in the run's train_log.json and the stage's JSON outputs."""

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        return None
