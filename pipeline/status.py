"""`ddfp status`: one line per run directory: split, method, seed, SLURM state, iteration / total,
the last validation mIoU, ETA and the log to read.

It reads only small files each run directory already has: `progress.json` (rewritten by the
training at every logged iteration), `slurm_job.json` (written at submission) and squeue's state of
that job. A run with no job is `local`; a job squeue no longer lists is `ended` (sacct has the rest).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pipeline.squeue import MARKER, queue_state, read_marker
from pipeline.train.console import PROGRESS, duration

if TYPE_CHECKING:
    from pipeline.train.trainer import RunPaths

COLUMNS = ("run", "split", "method", "seed", "state", "iteration", "val mIoU", "ETA", "log")


@dataclass(frozen=True)
class RunStatus:
    run: str
    split: str
    method: str
    seed: str
    state: str
    iteration: str
    val_miou: str
    eta: str
    log: str

    def cells(self) -> list[str]:
        return [self.run, self.split, self.method, self.seed, self.state, self.iteration, self.val_miou, self.eta,
                self.log]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or mid-rewrite on a file system without atomic rename
        return {}


def run_status(run_dir: Path, name: str | None = None) -> RunStatus:
    """The status of one run directory (of `dvc repro`, `ddfp submit`, the ablation or a sweep)."""
    progress, marker = _read(run_dir / PROGRESS), read_marker(run_dir) or {}
    about = {**marker, **progress}  # split, method, seed: known at submission, before any progress
    if marker:
        state = queue_state(marker["job_id"]) or "ended"
        state = f"{state} (job {marker['job_id']})"
    else:
        state = "local"
    done, total = progress.get("iteration"), progress.get("total")
    iteration = f"{done}/{total}" if done is not None else "-"
    if done is not None and done == total:
        state = f"finished, {state}" if marker else "finished"
    val = progress.get("val_miou")
    val_text = f"{val:.2f} (epoch {progress.get('val_epoch')})" if val is not None else "-"
    eta = duration(progress.get("eta_s")) if done is not None and done != total else "-"
    return RunStatus(name or str(run_dir), str(about.get("split", "-")), str(about.get("method", "-")),
                     str(about.get("seed", "-")), state, iteration, val_text, eta, marker.get("log", "-"))


def find_runs(roots: Iterable[Path]) -> list[Path]:
    """Every run directory under the roots: one with a progress file or a job marker."""
    found = {p.parent for root in roots for name in (PROGRESS, MARKER) for p in Path(root).rglob(name)}
    return sorted(found)


def table(statuses: list[RunStatus]) -> str:
    """Aligned plain text (a terminal, a job log, CI): a header and one line per run."""
    rows = [list(COLUMNS)] + [s.cells() for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows)


def status_table(run_dirs: Iterable[Path], base: Path | None = None) -> str:
    dirs = list(run_dirs)
    names = [str(d.relative_to(base)) if base and d.is_relative_to(base) else str(d) for d in dirs]
    return table([run_status(d, n) for d, n in zip(dirs, names)])


def every(seconds: float) -> Callable[[dict[str, RunPaths]], None]:
    """A waiter's on_poll: the status table of the runs it waits for, at most once per `seconds`
    (and at the first poll), on stderr beside the job messages."""
    last = [-math.inf]

    def show(runs: dict[str, RunPaths]) -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            statuses = [run_status(p.out_dir, label) for label, p in runs.items()]
            print(f"[{datetime.now():%H:%M:%S}]\n{table(statuses)}", file=sys.stderr, flush=True)

    return show


__all__ = ["RunStatus", "every", "find_runs", "run_status", "status_table", "table"]
