"""One writer per run directory: an advisory lock on `<run>/.lock` that says who holds it.

Every path that trains (`ddfp train` by hand or from `dvc repro`, the SLURM jobs of `ddfp submit`,
`ddfp ablation`, sweep trials) goes through pipeline.train.fit.fit, which holds this lock on rank 0.
The kernel releases a flock when its process ends, however it ends (kill -9, a SLURM requeue), so
a lock is never stale; the JSON in the file only names the holder for whoever is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator

from pipeline.errors import BusyError, DataError

LOCK_NAME = ".lock"


def _slurm_job() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"  # the id scancel and sacct take for one array task
    return os.environ.get("SLURM_JOB_ID")


def holder_info() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job(),
            "command": shlex.join(sys.argv), "since": datetime.now().astimezone().isoformat(timespec="seconds")}


def _busy(run_dir: Path, recorded: str) -> BusyError:
    try:
        info = json.loads(recorded)
    except ValueError:  # the holder has only just taken the lock and not written yet
        info = {}
    if not info:
        return BusyError(f"{run_dir} is being written by another process; wait for it or stop it")
    job = f" (SLURM job {info['slurm_job']})" if info.get("slurm_job") else ""
    return BusyError(f"{run_dir} is being written by pid {info.get('pid')} on host {info.get('host')}{job} "
                     f"since {info.get('since')} (`{info.get('command')}`); wait for it or stop it")


def _lock(fh: IO[str], run_dir: Path) -> None:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        raise _busy(run_dir, fh.read()) from None
    except OSError as err:  # e.g. ENOLCK: an NFS mount without a lock service
        raise DataError(f"{run_dir / LOCK_NAME}: cannot lock the run directory ({err.strerror}): its file system "
                        "does not support file locks (NFS without lockd?); put the run directories on one "
                        "that does") from None


@contextmanager
def hold(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold run_dir for the block (enabled=False: other ranks, which do not write); BusyError at
    once, naming the holder, while another process holds it."""
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as fh:
        _lock(fh, run_dir)
        fh.truncate(0)
        fh.write(json.dumps(holder_info()) + "\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)  # released: nobody to name (closing the file drops the lock)


__all__ = ["LOCK_NAME", "hold", "holder_info"]
