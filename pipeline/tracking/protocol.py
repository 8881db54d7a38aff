"""What the trainer and the evaluate stage ask of a tracker, and the tracker that does nothing.

`pipeline.tracking.tracker` holds the MLflow tracker and re-exports both names, the ones callers import."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pipeline.params import Config
from pipeline.tracking.identity import RunInfo


class Tracker(Protocol):
    """What the trainer and the evaluate stage ask of a tracker (NullTracker, MlflowTracker)."""

    run_id: str | None

    def start(self, cfg: Config, info: RunInfo, resume_id: str | None = None,
              parent_id: str | None = None) -> None: ...
    def attach(self, run_id: str | None) -> None: ...
    def log_metrics(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def register_model(self, name: str, tags: dict[str, str]) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing (other ranks, tracking disabled); every method does nothing."""

    run_id: str | None = None

    def start(self, cfg: Config, info: RunInfo, resume_id: str | None = None,
              parent_id: str | None = None) -> None: return None
    def attach(self, run_id: str | None) -> None: return None
    def log_metrics(self, metrics: dict[str, Any], step: int) -> None: return None
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: return None
    def set_tags(self, tags: dict[str, str]) -> None: return None
    def register_model(self, name: str, tags: dict[str, str]) -> None: return None
    def flush(self) -> None: return None
    def finish(self, status: str = "FINISHED") -> None: return None


__all__ = ["Tracker", "NullTracker"]
