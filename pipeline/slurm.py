"""Training on SLURM through submitit: the executor built from the `slurm` config, a Checkpointable
job that runs the same `fit`, and a watcher that blocks until the jobs end and fails clearly.

Time limits and preemption: SLURM sends USR2 `slurm.signal_delay_s` before the limit. The job's own
handler only sets a flag; `fit` sees it at the next iteration boundary (all ranks agree on the same
one) or at the next batch of an evaluation, saves and raises Interrupted; only then does submitit's
handler run: it calls checkpoint() (the save is already on disk) and requeues the job, which resumes
from out_dir/last.pt. SIGTERM (`scontrol requeue`, preemption on clusters that send no USR2, scancel)
sets the same flag; the job saves and exits, and SLURM requeues it or not: it is not requeued from
here, or a scancel could never stop it. KillWait (30 s by default) is the time between the two.

Each submitted run leaves `<run dir>/slurm_job.json` naming its job (pipeline.squeue): a later command
that finds the job still queued waits for it instead of training the run a second time.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import submitit
from submitit.core.job_environment import JobEnvironment
from submitit.core.utils import FailedJobError, UncompletedJobError

from ddfp.config import ConfigError
from pipeline.errors import JobError
from pipeline.params import Config, from_mapping
from pipeline.secrets import redact, redact_tree
from pipeline.squeue import adopted_job, over_in_queue, queue_state, write_marker

if TYPE_CHECKING:  # torch loads only where training runs: the CLI imports this module for its error type
    from pipeline.train.fit import FitSummary
    from pipeline.train.trainer import RunPaths

POLL_S = 5.0  # seconds between sacct polls while waiting


class SlurmJobError(JobError):
    """A SLURM job failed, was cancelled or killed; the message names the job id and its logs.
    `finished`: the results of the other jobs of the same wait that did finish, by label."""

    def __init__(self, message: str, finished: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.finished = dict(finished or {})


class TrainJob(submitit.helpers.Checkpointable):
    """One training run (all its tasks) on SLURM: every task joins the process group and calls fit.

    On a time limit or preemption, Checkpointable.checkpoint resubmits the same call; nothing more is
    needed: fit has already saved the state at an iteration boundary, and the call resumes from paths.ckpt.
    """

    def __call__(self, cfg_tree: dict[str, Any], paths: RunPaths) -> FitSummary:
        import torch

        from pipeline.train import distributed
        from pipeline.train.fit import Interrupted

        cfg = from_mapping(cfg_tree)
        stop, requeue, sig = _defer_stop_signals()
        if "OMP_NUM_THREADS" not in os.environ:  # slurm/env.sh sets it; else torch would use every core
            torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        env = distributed.init(cfg.run.device)
        try:
            return self.run(cfg, paths, env, stop)
        except Interrupted as err:
            by = signal.Signals(stop.signal or sig).name
            print(f"{err} ({by}); " + ("requeueing" if stop.signal == sig else "exiting: SLURM requeues the job or "
                  "it was cancelled"), file=sys.stderr, flush=True)
            try:
                if stop.signal == sig and callable(requeue):
                    requeue(sig, None)  # rank 0: checkpoint() + requeue + SystemExit; other ranks: returns
            finally:
                distributed.barrier(env)  # the others leave only after rank 0 has requeued
            raise SystemExit(-1) from None  # no result file: the job is not over
        finally:
            distributed.shutdown()

    def run(self, cfg: Config, paths: RunPaths, env: Any, stop: threading.Event) -> Any:
        """What the job does once the process group is up: fit (progress as plain lines, rank 0)."""
        from pipeline.train.fit import fit

        return fit(cfg, paths, dist=env, stop=stop)


class StopRequest(threading.Event):
    """Set by a stop signal; remembers which one (USR2 asks for a requeue, SIGTERM does not)."""

    signal: int | None = None

    def request(self, signum: int) -> None:
        self.signal = self.signal or signum
        self.set()


def _defer_stop_signals() -> tuple[StopRequest, Any, int]:
    """submitit's handler checkpoints, requeues and exits at once, wherever USR2 lands (mid optimiser
    step), and it ignores SIGTERM, so a `scontrol requeue` or a preemption without USR2 kills the job
    after KillWait with whatever it had not saved. Both only set the flag here: fit stops at the next
    iteration boundary (or evaluation batch) and saves; the job then calls submitit's handler itself."""
    stop, sig = StopRequest(), JobEnvironment._usr_sig()
    requeue = signal.getsignal(sig)
    for signum in (sig, signal.SIGTERM):
        signal.signal(signum, lambda n, _frame: stop.request(n))
    return stop, requeue, sig


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


def submit_training(cfg: Config, runs: dict[str, RunPaths], configs: dict[str, Config] | None = None,
                    job: TrainJob | None = None) -> list[submitit.Job]:
    """Submit one training job per label (several: one job array); paths are made absolute.

    configs: a label's own config where it differs from cfg (its method, seed); cfg gives the SLURM
    resources of the whole array. job: what each task runs (TrainJob: fit)."""
    from pipeline.train.trainer import RunPaths

    executor = make_executor(cfg, f"ddfp-{cfg.profile}")
    labels = list(runs)
    absolute = [RunPaths(*(Path(p).absolute() if p is not None else None for p in (
        r.data_root, r.split_dir, r.out_dir, r.weights))) for r in runs.values()]
    run_cfgs = [(configs or {}).get(label, cfg) for label in labels]
    jobs = executor.map_array(job or TrainJob(), [job_config(c) for c in run_cfgs], absolute)
    for label, run_cfg, paths, submitted in zip(labels, run_cfgs, absolute, jobs):
        write_marker(submitted, Path(cfg.slurm.folder).absolute(), label, run_cfg, paths)
        print(f"submitted SLURM job {submitted.job_id} ({label}); log {submitted.paths.stdout}", file=sys.stderr)
    return jobs


def _logs(job: submitit.Job) -> str:
    task = job.task(0)
    return f"log {task.paths.stdout}, errors {task.paths.stderr}"


def outcome(job: submitit.Job, label: str) -> Any:
    """The result of rank 0 of a finished job, or SlurmJobError naming the job, its state and logs."""
    state = job.get_info(mode="force").get("State") or queue_state(job.job_id) or "UNKNOWN"
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


def wait(jobs: Sequence[submitit.Job], labels: Sequence[str], poll_s: float = POLL_S,
         on_poll: Callable[[], None] | None = None) -> list[Any]:
    """Block until every job has ended (like `sbatch -W`); all failures are reported together, in a
    SlurmJobError whose `finished` holds the results of the jobs that did finish.

    A cancelled or killed job leaves no result file; submitit's own result() would wait on it, so
    the state comes from sacct (forced, not cached) and ends the wait. on_poll runs after each poll
    (a status display).
    """
    pending = dict(enumerate(jobs))
    results: list[Any] = [{} for _ in jobs]
    errors: dict[int, str] = {}
    listed: set[str] = set()
    while pending:
        jobs[0].get_info(mode="force")  # one sacct call refreshes every job of the watcher
        for i, job in list(pending.items()):
            if not job.done() and not (job.state == "UNKNOWN" and over_in_queue(job.job_id, listed)):
                continue
            del pending[i]
            try:
                results[i] = outcome(job, labels[i])
            except SlurmJobError as err:
                print(f"error: {err}", file=sys.stderr)
                errors[i] = str(err)
        if on_poll is not None:
            on_poll()
        if pending:
            time.sleep(poll_s)
    if errors:
        raise SlurmJobError("\n".join(errors.values()),
                            finished={labels[i]: r for i, r in enumerate(results) if i not in errors})
    return results


def train_on_slurm(cfg: Config, runs: dict[str, RunPaths], configs: dict[str, Config] | None = None,
                   poll_s: float = POLL_S, block: bool = True, on_poll: Callable[[], None] | None = None,
                   job: TrainJob | None = None) -> dict[str, Any]:
    """Each run, by what its directory holds: the job that still owns it is waited for; a checkpoint
    of its finished run is its result (TrainJob only: another job does more than train); anything else
    is submitted, all as one job array. Nothing trains in this process (a login node).
    block=False: return the finished runs only."""
    from pipeline.train.fit import finished_summary

    configs = configs or {}
    done: dict[str, Any] = {}
    jobs: dict[str, submitit.Job] = {}
    for label, paths in runs.items():
        adopted = adopted_job(paths.out_dir)
        if adopted is not None:
            print(f"SLURM job {adopted.job_id} already trains {label}; waiting for it", file=sys.stderr)
            jobs[label] = adopted
        elif job is None and (summary := finished_summary(configs.get(label, cfg), paths)) is not None:
            done[label] = summary
    todo = {label: paths for label, paths in runs.items() if label not in done and label not in jobs}
    if todo:
        jobs.update(zip(todo, submit_training(cfg, todo, configs, job)))
    if not block or not jobs:
        return done
    try:
        results = wait(list(jobs.values()), list(jobs), poll_s, on_poll)
    except SlurmJobError as err:
        err.finished.update(done)
        raise
    return {**done, **dict(zip(jobs, results))}


__all__ = ["SlurmJobError", "TrainJob", "job_config", "make_executor", "submit_training", "train_on_slurm", "wait"]
