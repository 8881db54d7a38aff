"""What squeue and a run directory's job marker say about a SLURM job: `<run dir>/slurm_job.json`,
written at submission, names the job that trains the run; squeue says whether it still owns it."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from pipeline.files import write_json_atomic

if TYPE_CHECKING:
    from pipeline.params import Config
    from pipeline.train.trainer import RunPaths

MARKER = "slurm_job.json"  # in a run directory: the job that was submitted to train it
# squeue states of a job that is over; any other listed state (PENDING, RUNNING, REQUEUED,
# COMPLETING, SUSPENDED, ...) is a job that still owns its run directory.
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "TIMEOUT"}


def write_marker(job: submitit.Job, folder: Path, label: str, cfg: Config, paths: RunPaths) -> None:
    """`<run dir>/slurm_job.json`: which job trains the run, where its log is, what it trains."""
    write_json_atomic({"job_id": job.job_id, "folder": str(folder), "label": label, "split": paths.split_dir.name,
                       "method": cfg.train.method, "seed": cfg.train.seed, "log": str(job.paths.stderr),
                       "submitted": datetime.now().astimezone().isoformat(timespec="seconds")},
                      paths.out_dir / MARKER)


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, ValueError):  # none, or torn by a crash mid-write: no job to wait for
        return None


def queue_state(job_id: str) -> str | None:
    """The job's state in squeue (any state slurmctld still remembers), or None when it is not listed
    or there is no squeue here (a copy of the run directory off the cluster)."""
    if shutil.which("squeue") is None:
        return None
    done = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    states = done.stdout.split()
    return states[0] if done.returncode == 0 and states else None


def adopted_job(run_dir: Path) -> submitit.Job | None:
    """The SLURM job that still owns run_dir (queued, running, requeued), else None."""
    marker = read_marker(run_dir)
    if marker is None:
        return None
    state = queue_state(marker["job_id"])
    if state is None or state in ENDED:
        return None
    return submitit.SlurmJob(folder=marker["folder"], job_id=marker["job_id"])


def over_in_queue(job_id: str, listed: set[str]) -> bool:
    """For a cluster without accounting (sacct answers nothing, submitit's state stays UNKNOWN): squeue
    shows the job ended, or no longer lists a job it listed before. Without this, a job killed before
    it wrote its result file would be waited for forever."""
    state = queue_state(job_id)
    if state is not None:
        listed.add(job_id)
    return state in ENDED or (state is None and job_id in listed)


__all__ = ["ENDED", "MARKER", "adopted_job", "over_in_queue", "queue_state", "read_marker", "write_marker"]
