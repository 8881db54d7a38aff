"""One task of `ddfp submit --local` in its own process: `python -m pipeline.local_worker <stage>`,
the stage named only so that `ps` shows what each worker does. It reads its task from stdin as JSON
({"kind": "train" | "evaluate", "config": ..., "paths": [...], "result": file}), runs the stage's
command in this process as `dvc repro` would, and writes the command's result to the result file.
An expected failure prints one line and exits with its documented code, as the `ddfp` commands do.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import failure
from pipeline.files import write_json_atomic
from pipeline.params import Config, from_mapping
from pipeline.secrets import redact


def train(cfg: Config, paths: list[str | None]) -> dict[str, Any]:
    """The train stage's command without its --export (the submitting process exports at commit).
    SIGINT (Ctrl-C reaches every worker) and SIGTERM only ask the training to stop: it saves at the
    next iteration and exits, so the next `ddfp submit` resumes where it stopped."""
    from pipeline.stages.train import run_train
    from pipeline.train.trainer import RunPaths

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _n, _frame: stop.set())
    summary = run_train(cfg, RunPaths(*(None if p is None else Path(p) for p in paths)), stop=stop)
    return summary.scalars() if summary is not None else {}


def evaluate(cfg: Config, paths: list[str]) -> dict[str, Any]:
    from pipeline.launchers import Evaluation, evaluate_here

    return evaluate_here(cfg.to_dict(), Evaluation(*map(Path, paths)), sys.argv[1] if len(sys.argv) > 1 else "")


KINDS: dict[str, Callable[[Config, list], dict[str, Any]]] = {"train": train, "evaluate": evaluate}


def main() -> None:
    task = json.load(sys.stdin)
    try:
        result = KINDS[task["kind"]](from_mapping(task["config"]), task["paths"])
    except (Exception, KeyboardInterrupt) as err:
        handled = failure(err)
        if handled is None:
            raise
        print(redact(f"{' '.join(sys.argv[1:])}: error: {handled[0]}"), file=sys.stderr)
        raise SystemExit(handled[1]) from None
    write_json_atomic(result, Path(task["result"]))


if __name__ == "__main__":
    main()
