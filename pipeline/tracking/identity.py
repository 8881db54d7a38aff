"""Who a training run is, as plain data: its name, tags, params (secrets redacted), the store it
goes to and the DVC hashes of its inputs. No MLflow calls here: `pipeline.tracking.tracker` makes them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.params import Config
from pipeline.secrets import redact_values

PARENT_TAG, GROUP_TAG, KIND_TAG = "mlflow.parentRunId", "ddfp_group", "ddfp_kind"


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
    # Runs that differ only in their seed (or where they stop) are one group under one parent run.
    flat = {k: v for k, v in cfg.training_values().items() if k not in ("train.seed", "train.max_iters")}
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


def run_spec(cfg: Config, info: RunInfo, parent_id: str | None) -> dict[str, Any]:
    """What creating a run needs, as plain data (a spooled create holds it, never a secret)."""
    return {"experiment": experiment_name(cfg), "name": info.name(cfg), "tags": run_tags(cfg, info),
            "parent": parent_id, "parent_name": f"{cfg.profile}-{cfg.data.dataset}-{cfg.train.method}-{group_hash(cfg)}"}


def param_strings(cfg: Config, info: RunInfo) -> dict[str, str]:
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in run_params(cfg, info).items()}


def run_note(cfg: Config, info: RunInfo) -> str:
    return (f"{cfg.train.method} on {cfg.data.dataset}, {info.split} labels, seed {cfg.train.seed} "
            f"(profile {cfg.profile}); eps {cfg.perturb.eps}, threshold {cfg.train.conf_thresh}")


__all__ = ["RunInfo", "project_dir", "tracking_uri", "experiment_name", "group_hash", "git_commit", "dvc_hashes",
           "run_params", "run_tags", "run_spec", "param_strings", "run_note", "PARENT_TAG", "GROUP_TAG", "KIND_TAG"]
