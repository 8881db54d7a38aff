"""Experiment tracking: one MLflow run per (dataset, split, method, seed), logged once, from rank 0.

The trainer and the evaluate stage talk to the `Tracker` protocol only. `MlflowTracker` never stops
training: the first failing call (server down, network cut) prints one warning and the tracker goes
quiet; the metrics stay in the stage's JSON outputs (train_log.json, val_log.json, metrics/*.json).

Run identity survives restarts: the run id is saved in the training checkpoint, so a resumed or
requeued job continues the same run. Runs of one configuration (all splits of a `dvc repro`, all
seeds) hang under a parent run found by a hash of that configuration; a sweep passes its own parent.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from tqdm import tqdm

from ddfp.config import Config
from pipeline.secrets import redact, redact_values

# Keys left out of the group hash: runs differing only in these share a parent run.
GROUP_INDEPENDENT = ("train.seed", "eval.", "tracking.", "data.num_workers", "train.device", "train.ckpt_every",
                     "train.log_every", "train.eval_every", "train.max_iters", "sweep.")
PARENT_TAG, GROUP_TAG, KIND_TAG = "mlflow.parentRunId", "ddfp_group", "ddfp_kind"
MAX_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing (other ranks, tracking disabled, benchmarks)."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        return None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: dict[str, str]) -> None:
        return None

    def finish(self, status: str = "FINISHED") -> None:
        return None


@dataclass(frozen=True)
class RunInfo:
    """What names a training run (the split comes from the split directory, not the config)."""

    split: str
    world_size: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    data_hashes: dict[str, str] = field(default_factory=dict)

    def name(self, cfg: Config) -> str:
        return f"{cfg.data.dataset}-{self.split}-{cfg.train.method}-seed{cfg.train.seed}"


def project_dir() -> Path:
    """The DVC project root when run by `dvc repro` (it exports DVC_ROOT), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(cfg: Config) -> str:
    """params key, else $MLFLOW_TRACKING_URI, else the embedded store in the project directory."""
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_dir() / 'mlflow.db'}"


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment or cfg.data.dataset


def group_hash(cfg: Config) -> str:
    flat = {k: v for k, v in cfg.flat().items() if not k.startswith(GROUP_INDEPENDENT)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def dvc_hashes(root: Path, paths: dict[str, Path | None]) -> dict[str, str]:
    """The md5 DVC recorded in dvc.lock for each input path ('untracked' when DVC does not track it)."""
    lock = root / "dvc.lock"
    recorded: dict[str, str] = {}
    if lock.is_file():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            for out in stage.get("outs", []):
                recorded[str((root / out["path"]).resolve())] = out.get("md5", "unknown")
    result = {}
    for name, path in paths.items():
        resolved = str(Path(path).resolve()) if path else ""
        # A split directory sits inside the tracked data/splits: report the hash of the tracked parent.
        hit = next((recorded[p] for p in (resolved, str(Path(resolved).parent)) if p in recorded), "untracked")
        result[f"dvc_md5.{name}"] = hit
    return result


def run_params(cfg: Config, info: RunInfo) -> dict[str, Any]:
    """The flattened resolved config plus what makes a run reproducible, secrets redacted."""
    t = cfg.train
    params = {
        **cfg.flat(), "split": info.split, "git_commit": git_commit(project_dir()), "world_size": info.world_size,
        "global_batch": t.batch_size * info.world_size, "resolved_device": info.device,
        "resolved_precision": info.precision, **info.data_hashes,
    }
    return redact_values(params)


def run_tags(cfg: Config, info: RunInfo) -> dict[str, str]:
    tags = {"split": info.split, "dataset": cfg.data.dataset, "method": cfg.train.method,
            "profile": cfg.profile, "seed": str(cfg.train.seed), GROUP_TAG: group_hash(cfg), KIND_TAG: "train"}
    if os.environ.get("DVC_STAGE"):
        tags["dvc_stage"] = os.environ["DVC_STAGE"]
    return tags


def _prepare_http_client() -> None:
    # MLflow's defaults retry an unreachable server for minutes; training must not wait that long.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class MlflowTracker:
    """A live MLflow run. Every call is guarded: the first error warns once and turns tracking off."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        _prepare_http_client()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self.active = True

    def _guard(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking is never allowed to stop training
            self.active = False
            msg = redact(str(err)).splitlines()[0][:300] if str(err) else type(err).__name__
            tqdm.write(f"warning: MLflow tracking at {redact(self.uri)} failed ({what}: {msg}); "
                       "training goes on untracked, metrics stay in the stage's JSON outputs")
            return None

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp:
            return exp.experiment_id
        # An embedded sqlite store keeps its artifacts beside it (MLflow's default is ./mlruns of
        # whatever directory the first run happened to start in).
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _find_parent(self, experiment_id: str, cfg: Config) -> str:
        group = group_hash(cfg)
        found = self.client.search_runs(
            [experiment_id], f"tags.{GROUP_TAG} = '{group}' and tags.{KIND_TAG} = 'parent'", max_results=1)
        if found:
            return found[0].info.run_id
        name = f"{cfg.profile}-{cfg.data.dataset}-{cfg.train.method}-{group}"
        run = self.client.create_run(experiment_id, run_name=name, tags={GROUP_TAG: group, KIND_TAG: "parent",
                                                                         "profile": cfg.profile})
        return run.info.run_id

    def _start(self, cfg: Config, info: RunInfo, resume_id: str | None, parent_id: str | None) -> None:
        from mlflow.entities import Param, RunTag

        experiment_id = self._experiment_id(experiment_name(cfg))
        if resume_id is not None:
            self.client.update_run(resume_id, status="RUNNING")
            self.run_id = resume_id  # params were logged when the run began; MLflow forbids changing them
            return
        parent_id = parent_id or self._find_parent(experiment_id, cfg)
        tags = {**run_tags(cfg, info), PARENT_TAG: parent_id}
        run = self.client.create_run(experiment_id, run_name=info.name(cfg), tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in run_params(cfg, info).items()]
        for i in range(0, len(params), MAX_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_BATCH])
        self.client.log_batch(self.run_id, tags=[RunTag("mlflow.note.content", _note(cfg, info))])

    def start(self, cfg: Config, info: RunInfo, resume_id: str | None = None, parent_id: str | None = None) -> None:
        self._guard("start run", self._start, cfg, info, resume_id, parent_id)

    def attach(self, run_id: str) -> None:
        """Log into an existing run (the evaluate stage adds to the training run)."""
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self._guard("log metrics", self.client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            self._guard("log artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if self.run_id is not None:
            batch = [RunTag(k, redact(str(v))) for k, v in tags.items()]
            self._guard("set tags", self.client.log_batch, self.run_id, tags=batch)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        self._guard("end run", self.client.set_terminated, self.run_id, status)
        parent = self._guard("read run", self.client.get_run, self.run_id)
        parent_id = parent.data.tags.get(PARENT_TAG) if parent else None
        if parent_id and status == "FINISHED":  # the parent is as finished as its latest child
            self._guard("end parent run", self.client.set_terminated, parent_id, "FINISHED")


def _note(cfg: Config, info: RunInfo) -> str:
    return (f"{cfg.train.method} on {cfg.data.dataset}, {info.split} labels, seed {cfg.train.seed} "
            f"(profile {cfg.profile}); eps {cfg.perturb.eps}, threshold {cfg.train.conf_thresh}")


def open_tracker(cfg: Config, rank: int = 0) -> MlflowTracker | NullTracker:
    """The tracker of this process: MLflow on rank 0 when tracking is enabled, else a null tracker."""
    if rank != 0 or not cfg.tracking.enabled:
        return NullTracker()
    return MlflowTracker(tracking_uri(cfg))


def write_config_artifact(cfg: Config, tracker: Tracker) -> None:
    """The resolved config as `config.yaml` in the run's artifacts (secrets redacted)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(redact(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
        tracker.log_artifact(path)


__all__ = ["Tracker", "NullTracker", "MlflowTracker", "RunInfo", "open_tracker", "tracking_uri",
           "experiment_name", "group_hash", "dvc_hashes", "run_params", "write_config_artifact"]
