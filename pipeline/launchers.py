"""Where `ddfp submit` runs the stages it fans out: a table of launchers, each able to train a set of
runs and to evaluate a set of models, so that pipeline.repro has one code path for both.

- slurm: one job array for the trainings (pipeline.slurm.train_on_slurm), then one for the
  evaluations (EvalJob), from a login node that only waits.
- local: N worker processes on this machine (pipeline.local_pool), each with its own GPU, or its
  share of the cores where there is none.

An evaluation runs as its own task, not at the end of its training's job: which evaluations must
run is known only once the trainings are recorded (`dvc status` after `dvc commit`: an edit of
eval.* reruns evaluations and trains nothing), it reads the model.pt that recording exports, and it
is one process on one GPU where the training may hold several.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit

from pipeline.errors import UsageError
from pipeline.files import write_json_atomic
from pipeline.params import Config, from_mapping, replace

OnPoll = Callable[[], None]


@dataclass(frozen=True)
class Evaluation:
    """One evaluate stage's command: the model, the dataset, the split (its val list), the metrics file."""

    ckpt: Path
    data_root: Path
    split_dir: Path
    out: Path

    def absolute(self) -> Evaluation:
        """Paths a job on another host (or in another working directory) still finds."""
        return Evaluation(*(Path(p).absolute() for p in (self.ckpt, self.data_root, self.split_dir, self.out)))


def job_id_here() -> str | None:
    """The SLURM job this process runs in, as sbatch and scancel name it (array tasks: <array>_<task>)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def evaluate_here(tree: dict[str, Any], ev: Evaluation, label: str) -> dict[str, Any]:
    """Run the evaluate stage's command in this process; returns what it wrote and where it ran (the
    metrics file's mtime: a later rewrite of the file by anyone else shows)."""
    from pipeline.stages.evaluate import run_evaluate

    metrics = run_evaluate(from_mapping(tree), ev.ckpt, ev.data_root, ev.split_dir, ev.out)
    return {"stage": label, "val_miou": metrics["val_miou"], "out": str(ev.out),
            "out_mtime_ns": ev.out.stat().st_mtime_ns, "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": job_id_here()}


class EvalJob(submitit.helpers.Checkpointable):
    """One evaluation as a SLURM task; requeued as it is on preemption (it saves nothing partial).
    It leaves `<job id>_evaluation.json` beside its submitit logs: which job wrote which metrics file."""

    def __call__(self, tree: dict[str, Any], ev: Evaluation, label: str) -> dict[str, Any]:
        if "OMP_NUM_THREADS" not in os.environ:  # else torch would use every core of the node
            import torch

            torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        record = evaluate_here(tree, ev, label)
        env = submitit.JobEnvironment()
        write_json_atomic(record, Path(env.paths.folder) / f"{env.job_id}_evaluation.json")
        return record


def evaluation_resources(cfg: Config) -> Config:
    """The slurm section for evaluations: one process on one node, with one GPU where training has
    GPUs. The training's tasks_per_node would run the same evaluation once per task."""
    return replace(cfg, {"slurm.nodes": 1, "slurm.tasks_per_node": 1,
                         "slurm.gpus_per_node": min(cfg.slurm.gpus_per_node, 1)})


def evaluate_on_slurm(cfg: Config, evals: dict[str, Evaluation], configs: dict[str, Config],
                      on_poll: OnPoll | None = None) -> dict[str, Any]:
    """Submit the evaluations as one job array and wait for it; SlurmJobError names the failed ones
    (its `finished`: the others). cfg gives the SLURM resources; configs[label] each one's values."""
    from pipeline.slurm import job_config, make_executor, wait

    if not evals:
        return {}
    labels = list(evals)
    executor = make_executor(evaluation_resources(cfg), f"ddfp-eval-{cfg.profile}")
    jobs = executor.map_array(EvalJob(), [job_config(configs[label]) for label in labels],
                              [evals[label].absolute() for label in labels], labels)
    for label, job in zip(labels, jobs):
        print(f"submitted SLURM job {job.job_id} ({label}); log {job.paths.stdout}", file=sys.stderr, flush=True)
    return dict(zip(labels, wait(jobs, labels, on_poll=on_poll)))


@dataclass(frozen=True)
class Launcher:
    """train(cfg, runs, configs, block, on_poll) and evaluate(cfg, evals, configs, on_poll) return the
    results of what finished, by stage, or raise a JobError whose `finished` holds those.
    detached: its jobs outlive this command (--no-wait). stage_launcher: the run.launcher a plain
    `dvc repro` needs to train where this launcher does (None: any)."""

    where: str
    train: Callable[..., dict[str, Any]]
    evaluate: Callable[..., dict[str, Any]]
    detached: bool
    stage_launcher: str | None


def _slurm(workers: int | None) -> Launcher:
    from pipeline.slurm import train_on_slurm

    if workers is not None:
        raise UsageError("-j/--jobs: sets the workers of --local; on SLURM, slurm.array_parallelism caps the "
                         "jobs running at once")

    def train(cfg: Config, runs: dict, configs: dict, block: bool, on_poll: OnPoll | None) -> dict[str, Any]:
        return train_on_slurm(cfg, runs, configs, block=block, on_poll=on_poll)

    return Launcher("on SLURM", train, evaluate_on_slurm, detached=True, stage_launcher="slurm")


def _local(workers: int | None) -> Launcher:
    from pipeline.local_pool import LocalPool

    pool = LocalPool(workers)
    return Launcher(f"in {len(pool.slots)} local worker(s)", pool.train, pool.evaluate, detached=False,
                    stage_launcher=None)


LAUNCHERS: dict[str, Callable[[int | None], Launcher]] = {"slurm": _slurm, "local": _local}


def launcher(name: str, workers: int | None = None) -> Launcher:
    """The launcher called `name` (LAUNCHERS), with `workers` processes where it runs them itself."""
    if name not in LAUNCHERS:
        raise UsageError(f"launcher {name!r}: one of {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name](workers)


__all__ = ["LAUNCHERS", "EvalJob", "Evaluation", "Launcher", "evaluate_here", "evaluate_on_slurm", "launcher"]
