"""`ddfp submit --local -j N`: the stages fanned out to N worker processes on this machine, the setup
of one workstation with several GPUs.

Each task is a fresh interpreter, `python -m pipeline.local_worker <stage>` (pipeline.local_worker):
no torch state or CUDA context is inherited, a crash ends that task only, and `ps` names the stage.
Its config goes through stdin, never argv (a tracking URI may hold a password). A worker slot is an
environment: its own GPU (CUDA_VISIBLE_DEVICES) where there are GPUs, and its share of the cores
(OMP_NUM_THREADS), so N trainings do not oversubscribe the machine. A slot takes the next task when
its task ends; a failed task does not stop the others, and every failure is reported together.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from pipeline.errors import JobError, UsageError
from pipeline.params import Config, replace

POLL_S = 0.5  # seconds between checks of the running workers
STOP_WAIT_S = 60.0  # how long a stopped worker may take to save its state before it is killed
LOGS = Path("runs") / "submit_logs"  # <stage>.log and <stage>.result.json of each task


class WorkerError(JobError):
    """A local worker failed; the message names its stage, exit code and log. `finished`: the results
    of the tasks that did finish, by stage."""

    def __init__(self, message: str, finished: dict[str, Any]) -> None:
        super().__init__(message)
        self.finished = dict(finished)


@dataclass
class Task:
    label: str
    payload: dict[str, Any]  # what the worker reads from stdin (pipeline.local_worker)

    @property
    def log(self) -> Path:
        return (LOGS / f"{self.label}.log").absolute()

    @property
    def result(self) -> Path:
        return (LOGS / f"{self.label}.result.json").absolute()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (it is honoured when set)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and not g.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_slots(workers: int | None, gpus: list[str], cores: int) -> list[dict[str, str]]:
    """One environment per worker: its GPU where there are GPUs, its share of the cores in any case.
    workers=None: one per GPU, else 1. More workers than GPUs would share GPUs: refused."""
    n = workers or max(len(gpus), 1)
    if gpus and n > len(gpus):
        raise UsageError(f"-j {n}: this machine shows {len(gpus)} GPU(s) ({','.join(gpus)}); each worker "
                         f"trains on its own GPU, so use -j {len(gpus)} or fewer")
    threads = str(max(1, cores // n))
    slots = [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(n)]
    for slot, gpu in zip(slots, gpus):
        slot["CUDA_VISIBLE_DEVICES"] = gpu
    return slots


def usable_cores() -> int:
    """The cores this process may run on (a taskset or cgroup can allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def absolute(*paths: Path | None) -> list[str | None]:
    """Paths as the worker's payload carries them: absolute, None kept (a run without weights)."""
    return [None if p is None else str(Path(p).absolute()) for p in paths]


class LocalPool:
    """The local launcher's two steps (pipeline.launchers.Launcher): train and evaluate, as tasks."""

    def __init__(self, workers: int | None) -> None:
        self.slots = worker_slots(workers, visible_gpus(), usable_cores())

    def train(self, cfg: Config, runs: dict, configs: dict, block: bool,
              on_poll: Callable[[], None] | None) -> dict[str, Any]:
        """Train each run in a worker; the runs' own config, on the local launcher (one process). The
        longest first: a semi-supervised training takes 2-3x a supervised one, and with the short
        ones last the workers end together (in DVC's order the demo's two DDFP runs shared one of
        two workers: 900 s instead of 660 s)."""
        from ddfp.methods import method_spec  # imports torch: only when there is training to do

        own = {label: configs.get(label, cfg) for label in runs}
        order = sorted(runs, key=lambda label: not method_spec(own[label]).semi)  # stable: DVC's order within
        tasks = [Task(label, {"kind": "train", "paths": absolute(runs[label].data_root, runs[label].split_dir,
                                                                 runs[label].out_dir, runs[label].weights),
                              "config": replace(own[label], {"run.launcher": "local"}).to_dict()})
                 for label in order]
        return self.run(tasks, on_poll)

    def evaluate(self, cfg: Config, evals: dict, configs: dict, on_poll: Callable[[], None] | None) -> dict[str, Any]:
        """Evaluate each model in a worker, with its stage's config."""
        tasks = [Task(label, {"kind": "evaluate", "paths": absolute(ev.ckpt, ev.data_root, ev.split_dir, ev.out),
                              "config": configs.get(label, cfg).to_dict()})
                 for label, ev in evals.items()]
        return self.run(tasks, on_poll)

    def run(self, tasks: list[Task], on_poll: Callable[[], None] | None = None) -> dict[str, Any]:
        """Run the tasks, at most one per slot at a time; their results by label, or WorkerError."""
        pending, free = list(tasks), list(range(len(self.slots)))
        running: dict[int, tuple[Task, subprocess.Popen, TextIO]] = {}
        results: dict[str, Any] = {}
        errors: list[str] = []
        try:
            while pending or running:
                while pending and free:
                    slot = free.pop(0)
                    running[slot] = self.start(pending.pop(0), self.slots[slot])
                time.sleep(POLL_S)
                for slot, (task, proc, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[slot]
                    free.append(slot)
                    log.close()
                    self.collect(task, proc, results, errors)
                if on_poll is not None:
                    on_poll()
        finally:
            stop(running.values())
        if errors:
            raise WorkerError("\n".join(errors), finished=results)
        return results

    @staticmethod
    def start(task: Task, env: dict[str, str]) -> tuple[Task, subprocess.Popen, TextIO]:
        task.log.parent.mkdir(parents=True, exist_ok=True)
        task.result.unlink(missing_ok=True)  # a result is this run's, never an earlier one's
        log = task.log.open("w")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.local_worker", task.label], stdin=subprocess.PIPE,
                                stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({**task.payload, "result": str(task.result)}))
        proc.stdin.close()
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else \
            f"{env['OMP_NUM_THREADS']} thread(s)"
        print(f"started local worker {proc.pid} ({task.label}, {where}); log {task.log}", file=sys.stderr, flush=True)
        return task, proc, log

    @staticmethod
    def collect(task: Task, proc: subprocess.Popen, results: dict[str, Any], errors: list[str]) -> None:
        """The ended task's result, or its failure: exit code, the log's last line, the log."""
        if proc.returncode == 0 and task.result.is_file():
            results[task.label] = json.loads(task.result.read_text())
            print(f"local worker {proc.pid} ({task.label}) finished", file=sys.stderr, flush=True)
            return
        lines = [ln for ln in task.log.read_text(errors="replace").splitlines() if ln.strip()]
        message = (f"local worker {proc.pid} ({task.label}) failed (exit {proc.returncode}): "
                   f"{lines[-1].strip() if lines else 'no output'}; log {task.log}")
        print(f"error: {message}", file=sys.stderr, flush=True)
        errors.append(message)


def stop(running: Any) -> None:
    """Workers still running when the wait ends early (Ctrl-C, an error here): SIGINT, which a
    training answers as it answers Ctrl-C, by saving its state; killed if it does not end in time."""
    for _, proc, _ in running:
        proc.send_signal(signal.SIGINT)
    for _, proc, log in running:
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


__all__ = ["LocalPool", "Task", "WorkerError", "visible_gpus", "worker_slots"]
