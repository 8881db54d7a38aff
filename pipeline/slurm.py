"""Training on SLURM through submitit: the executor built from the `slurm` config, a Checkpointable
job that runs the same `fit`, and a watcher that blocks until the jobs end and fails clearly.

Time limits and preemption: SLURM sends USR2 `slurm.signal_delay_s` before the limit. The job's own
handler only sets a flag; `fit` sees it at the next iteration boundary (all ranks agree on the same
one), saves and raises Interrupted; only then does submitit's handler run: it calls checkpoint()
(the save is already on disk) and requeues the job, which resumes from out_dir/last.pt.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import submitit
from submitit.core.job_environment import JobEnvironment
from submitit.core.utils import FailedJobError, UncompletedJobError

from ddfp.config import ConfigError
from pipeline.errors import JobError
from pipeline.params import Config, from_mapping
from pipeline.secrets import redact, redact_tree

if TYPE_CHECKING:  # torch loads only where training runs: the CLI imports this module for its error type
    from pipeline.train.fit import FitSummary
    from pipeline.train.trainer import RunPaths

POLL_S = 5.0  # seconds between sacct polls while waiting


class SlurmJobError(JobError):
    """A SLURM job failed, was cancelled or killed; the message names the job id and its logs."""


class TrainJob(submitit.helpers.Checkpointable):
    """One training run (all its tasks) on SLURM: every task joins the process group and calls fit.

    On a time limit or preemption, Checkpointable.checkpoint resubmits the same call; nothing more is
    needed: fit has already saved the state at an iteration boundary, and the call resumes from paths.ckpt.
    """

    def __call__(self, cfg_tree: dict[str, Any], paths: RunPaths) -> FitSummary:
        import torch

        from pipeline.train import distributed
        from pipeline.train.fit import Interrupted, fit

        cfg = from_mapping(cfg_tree)
        stop = threading.Event()
        sig = JobEnvironment._usr_sig()
        # submitit's handler checkpoints, requeues and exits at once, wherever the signal lands
        # (mid optimiser step). Defer it: our handler only sets the flag, fit stops at an iteration
        # boundary and saves, then submitit's handler runs from here.
        requeue = signal.getsignal(sig)
        signal.signal(sig, lambda *_: stop.set())
        if "OMP_NUM_THREADS" not in os.environ:  # slurm/env.sh sets it; else torch would use every core
            torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        env = distributed.init(cfg.run.device)
        try:
            return fit(cfg, paths, dist=env, stop=stop)  # progress: plain lines in the job log (rank 0)
        except Interrupted:
            try:
                if callable(requeue):
                    requeue(sig, None)  # rank 0: checkpoint() + requeue + SystemExit; other ranks: returns
            finally:
                distributed.barrier(env)  # the others leave only after rank 0 has requeued
            raise SystemExit(-1) from None  # no result file: the job is not over
        finally:
            distributed.shutdown()


def job_config(cfg: Config) -> dict[str, Any]:
    """The config the job receives (pickled into the submitit folder): every URL password redacted.
    Training reads none of them; a tracking URI with a password must come from the environment."""
    tree = redact_tree(cfg.to_dict())
    if tree["tracking"]["uri"] != cfg.tracking.uri:
        raise ConfigError("tracking.uri: holds a password; set MLFLOW_TRACKING_URI in the environment instead")
    return tree


def make_executor(cfg: Config, name: str) -> submitit.AutoExecutor:
    s = cfg.slurm
    for line in [*s.setup, *map(str, s.additional_parameters.values())]:
        if redact(line) != line:
            raise ConfigError("slurm.setup / slurm.additional_parameters: a URL with a password would be written "
                              "into the sbatch script; reference an environment variable instead")
    if shutil.which("sbatch") is None:
        raise SlurmJobError("sbatch not found: run on a SLURM login node (or start slurm/start_cluster.sh)")
    folder = Path(s.folder).absolute()
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_num_timeout)
    optional = {"slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos,
                "slurm_constraint": s.constraint, "mem_gb": s.mem_gb, "gpus_per_node": s.gpus_per_node or None,
                "slurm_array_parallelism": s.array_parallelism}
    executor.update_parameters(
        name=name, nodes=s.nodes, tasks_per_node=s.tasks_per_node, cpus_per_task=s.cpus_per_task,
        timeout_min=s.time_min, slurm_signal_delay_s=s.signal_delay_s, slurm_setup=list(s.setup),
        slurm_additional_parameters=dict(s.additional_parameters),
        **{k: v for k, v in optional.items() if v is not None},
    )
    return executor


def submit_training(cfg: Config, runs: dict[str, RunPaths]) -> list[submitit.Job]:
    """Submit one training job per label (several: one job array); paths are made absolute."""
    from pipeline.train.trainer import RunPaths

    executor = make_executor(cfg, f"ddfp-{cfg.profile}")
    labels = list(runs)
    absolute = [RunPaths(*(Path(p).absolute() if p is not None else None for p in (
        r.data_root, r.split_dir, r.out_dir, r.weights))) for r in runs.values()]
    tree = job_config(cfg)
    jobs = executor.map_array(TrainJob(), [tree] * len(labels), absolute)
    for label, job in zip(labels, jobs):
        print(f"submitted SLURM job {job.job_id} ({label}); log {job.paths.stdout}", file=sys.stderr)
    return jobs


def _logs(job: submitit.Job) -> str:
    task = job.task(0)
    return f"log {task.paths.stdout}, errors {task.paths.stderr}"


def outcome(job: submitit.Job, label: str) -> Any:
    """The result of rank 0 of a finished job, or SlurmJobError naming the job, its state and logs."""
    state = job.get_info(mode="force").get("State", "UNKNOWN")
    task = job.task(0)
    if not task.paths.result_pickle.exists() and not state.startswith("COMPLETED"):
        raise SlurmJobError(f"SLURM job {job.job_id} ({label}) ended {state} without finishing; {_logs(job)}")
    try:
        return task.result()
    except (FailedJobError, UncompletedJobError) as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip() and not ln.startswith("-")]
        cause = next((ln for ln in reversed(lines) if "Error" in ln), lines[0] if lines else "")
        raise SlurmJobError(redact(f"SLURM job {job.job_id} ({label}) failed ({state}): {cause.strip()}; "
                                   f"{_logs(job)}")) from None


def wait(jobs: Sequence[submitit.Job], labels: Sequence[str], poll_s: float = POLL_S) -> list[Any]:
    """Block until every job has ended (like `sbatch -W`); all failures are reported together.

    A cancelled or killed job leaves no result file; submitit's own result() would wait on it, so
    the state comes from sacct (forced, not cached) and ends the wait.
    """
    pending = dict(enumerate(jobs))
    results: list[Any] = [{} for _ in jobs]
    errors: list[str] = []
    while pending:
        jobs[0].get_info(mode="force")  # one sacct call refreshes every job of the watcher
        for i, job in list(pending.items()):
            if not job.done():
                continue
            del pending[i]
            try:
                results[i] = outcome(job, labels[i])
            except SlurmJobError as err:
                print(f"error: {err}", file=sys.stderr)
                errors.append(str(err))
        if pending:
            time.sleep(poll_s)
    if errors:
        raise SlurmJobError("\n".join(errors))
    return results


def train_on_slurm(cfg: Config, runs: dict[str, RunPaths], poll_s: float = POLL_S) -> list[FitSummary]:
    return wait(submit_training(cfg, runs), list(runs), poll_s)


__all__ = ["SlurmJobError", "TrainJob", "make_executor", "submit_training", "wait", "train_on_slurm", "job_config"]
