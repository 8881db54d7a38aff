"""Running a sweep end to end: the study and its MLflow parent run, the workers (in this process, local
processes, or a SLURM job array), then the report files. Every worker is an independent `run_worker`
pulling trials from the shared storage. Its inputs come from pipeline.stages.inputs.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import submitit

from ddfp.config import ConfigError
from pipeline.params import Config, from_mapping
from pipeline.secrets import redact, refuse_literal_secret
from pipeline.sweep.fingerprint import check_fingerprint
from pipeline.sweep.outputs import write_outputs
from pipeline.sweep.study import (
    SweepError,
    SweepPaths,
    budget,
    load_study,
    refuse_journal_workers,
    run_worker,
    storage_url,
    trial_config,
)
from pipeline.sweep.tracking import finish_parent_run, open_parent_run


def check_space(cfg: Config) -> None:
    """Both ends of every range must give a valid config: fail here, not in every trial."""
    for end in ("low", "high"):
        values = {k: (v.choices[0] if v.type == "categorical" else getattr(v, end)) for k, v in cfg.sweep.params.items()}
        values = {k: int(v) if cfg.sweep.params[k].type == "int" else v for k, v in values.items()}
        trial_config(cfg, values)


def _worker_process(tree: dict[str, Any], paths: SweepPaths, parent: str | None, worker: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the workers share the machine's cores
    run_worker(from_mapping(tree), paths, parent, worker)


def _local_workers(cfg: Config, paths: SweepPaths, parent: str | None) -> None:
    # spawn: a fresh interpreter per worker (no forked torch threads, no copied sqlite connections);
    # the config travels through a pipe, never through argv or a file (it may hold a storage password).
    ctx = multiprocessing.get_context("spawn")
    n = cfg.sweep.workers
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = [ctx.Process(target=_worker_process, args=(cfg.to_dict(), paths, parent, i, threads),
                         name=f"ddfp-sweep-worker-{i}") for i in range(n)]
    for proc in procs:
        proc.start()
    print(f"workers: {', '.join(str(p.pid) for p in procs)}", file=sys.stderr, flush=True)
    for proc in procs:
        proc.join()
    for i, proc in enumerate(procs):
        if proc.exitcode:
            how = f"was killed by signal {-proc.exitcode}" if proc.exitcode < 0 else f"exited with {proc.exitcode}"
            print(f"warning: worker {i} (pid {proc.pid}) {how}", file=sys.stderr)


class SweepJob(submitit.helpers.Checkpointable):
    """One worker as a SLURM array task; requeued on preemption (its trial goes stale and is retried)."""

    def __call__(self, tree: dict[str, Any], paths: SweepPaths, parent: str | None, worker: int) -> int:
        return run_worker(from_mapping(tree), paths, parent, worker)


def job_tree(cfg: Config) -> dict[str, Any]:
    """The config a SLURM worker receives (pickled into the submitit folder): every URL password
    redacted, and the storage as a ${VAR} reference the job expands from its own environment (SLURM
    passes the submitter's on), so the folder never holds the password. A literal one is refused."""
    from pipeline.slurm import job_config

    if cfg.sweep.storage:
        refuse_literal_secret(cfg.sweep.storage, "sweep.storage", "that would be pickled into the submitit folder")
    tree = job_config(cfg)
    url = storage_url(cfg)
    if cfg.sweep.storage or redact(url) == url:
        # The reference as written, or the default sqlite file resolved here (the job's cwd may differ);
        # a password in $OPTUNA_STORAGE stays in the environment, where the job reads it.
        tree["sweep"]["storage"] = url
    return tree


def _slurm_workers(cfg: Config, paths: SweepPaths, parent: str | None) -> None:
    from pipeline.slurm import make_executor, wait

    if cfg.slurm.nodes != 1 or cfg.slurm.tasks_per_node != 1:
        raise ConfigError("slurm.nodes / slurm.tasks_per_node: a sweep worker is one process (multi-task DDP "
                          "trials are not supported); set both to 1")
    tree = job_tree(cfg)
    absolute = SweepPaths(*(Path(p).absolute() if p is not None else None for p in (
        paths.data_root, paths.split_dir, paths.weights, paths.runs, paths.reports)))
    n = cfg.sweep.workers
    jobs = make_executor(cfg, f"ddfp-sweep-{cfg.sweep.study}").map_array(
        SweepJob(), [tree] * n, [absolute] * n, [parent] * n, list(range(n)))
    print(f"submitted SLURM job array {jobs[0].job_id.split('_')[0]} ({n} workers); log {jobs[0].paths.stdout}",
          file=sys.stderr, flush=True)
    wait(jobs, [f"sweep worker {i}" for i in range(n)])


def run_sweep(cfg: Config, paths: SweepPaths) -> dict[str, Any]:
    """Run (or continue) the study to sweep.n_trials, write reports/sweep/<study>/; returns its summary."""
    s = cfg.sweep
    check_space(cfg)
    refuse_journal_workers(cfg)
    shown = redact(storage_url(cfg))
    study = load_study(cfg)
    check_fingerprint(study, cfg)  # here, before any worker starts: they load the study it checked
    left = max(budget(study, s.n_trials)[0], 0)
    print(f"study {s.study} in {shown}: {len(study.trials)} trials so far, {left} to start, {s.workers} worker(s)",
          file=sys.stderr, flush=True)
    parent = open_parent_run(cfg, shown)
    if cfg.run.launcher == "slurm":
        _slurm_workers(cfg, paths, parent)
    elif s.workers == 1:
        run_worker(cfg, paths, parent)
    else:
        _local_workers(cfg, paths, parent)
    summary, files = write_outputs(cfg, load_study(cfg), paths.reports)
    finish_parent_run(cfg, parent, summary, files)
    done = summary["states"]["COMPLETE"] + summary["states"]["PRUNED"] + summary["states"]["FAIL"]
    if s.timeout_min is None and done - _retried(load_study(cfg)) < s.n_trials:
        raise SweepError(f"study {s.study}: {summary['states']} after the workers ended, fewer than "
                         f"sweep.n_trials={s.n_trials} (see the warnings above); rerun to continue it")
    return summary


def _retried(study) -> int:
    return len({n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])})


__all__ = ["run_sweep", "check_space", "SweepJob"]
