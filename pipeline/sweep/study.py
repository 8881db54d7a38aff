"""`ddfp sweep`: an Optuna study over config values (perturb.eps and train.conf_thresh by default).

Each trial derives its config with `config.replace` (search values over the sweep's shorter
schedule), trains with `fit` in its own directory and reports every evaluation to the pruner. The
objective is the final val mIoU of the reported model.

Workers are separate processes pulling trials from one storage (sqlite, PostgreSQL; a journal file
only for a single worker, having no heartbeat):
`sweep.workers` local processes, or a SLURM job array with run.launcher: slurm. `sweep.n_trials`
is the study's total, so a rerun (or a second worker) continues the study instead of adding to it;
the check-then-ask step holds a file lock in the sweep's run directory so workers never overshoot.
With RDB storage a heartbeat marks the trial of a killed worker FAIL and queues a retry (same values,
same run directory, so training resumes from its checkpoint): a worker whose budget is spent waits
for the running trials of the others until they finish or go stale.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from ddfp.config import ConfigError
from pipeline import params
from pipeline.errors import JobError
from pipeline.params import Config
from pipeline.secrets import expand_env, redact
from pipeline.sections import ParamSpace
from pipeline.sweep.tracking import RetryStaleTrial, TrialTracker, open_parent_run
from pipeline.tracking.identity import project_dir, tracking_uri
from pipeline.tracking.tracker import NullTracker

if TYPE_CHECKING:  # torch loads only where a trial trains
    from pipeline.train.fit import FitSummary

STORAGE_ENV = "OPTUNA_STORAGE"


@dataclass(frozen=True)
class SweepPaths:
    data_root: Path
    split_dir: Path
    weights: Path | None
    runs: Path  # runs/sweep/<study>: trial_<n>/ per trial, the ask lock
    reports: Path  # reports/sweep/<study>


class SweepError(JobError):
    """The study did not reach its trial count (workers died, every trial failed)."""


def storage_url(cfg: Config) -> str:
    """As configured, unexpanded (may hold ${VAR}): safe to show once redacted."""
    return cfg.sweep.storage or os.environ.get(STORAGE_ENV) or f"sqlite:///{project_dir() / 'optuna.db'}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:")


def refuse_journal_workers(cfg: Config) -> None:
    """ConfigError for a journal storage with more than one worker.

    Optuna 5.0's JournalStorage has no heartbeat (it is no optuna.storages BaseHeartbeat), so the trial
    of a killed or preempted worker stays RUNNING for good: never retried, and counted in the budget,
    so the study ends short while the other workers go on as if nothing happened. A single local
    worker is allowed (a journal file needs no server): its death ends the sweep where it is seen."""
    if is_journal(storage_url(cfg)) and (cfg.sweep.workers > 1 or cfg.run.launcher == "slurm"):
        how = "a SLURM job array" if cfg.run.launcher == "slurm" else f"sweep.workers={cfg.sweep.workers}"
        raise ConfigError(f"sweep.storage {redact(storage_url(cfg))}: a journal file cannot serve {how}: Optuna's "
                          "JournalStorage has no heartbeat, so the trial of a killed worker would stay RUNNING "
                          "forever and never be retried; use sqlite on a local disk (sqlite:///optuna.db, one "
                          "host) or PostgreSQL (postgresql+psycopg2://user:${PGPASSWORD}@host/db)")


def open_storage(cfg: Config) -> optuna.storages.BaseStorage:
    """journal:PATH (journal:///abs or journal:rel) -> a journal file; anything else -> RDBStorage,
    with the heartbeat that retries the trials of dead workers (sweep.heartbeat_interval_s)."""
    s, url = cfg.sweep, expand_env(storage_url(cfg), "sweep.storage")
    if is_journal(url):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path = path if path.is_absolute() else project_dir() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.journal.JournalStorage(backend)
    heartbeat: dict[str, Any] = {}
    if s.heartbeat_interval_s:
        heartbeat = {"heartbeat_interval": s.heartbeat_interval_s, "grace_period": s.grace_period_s,
                     "heartbeat_stale_trial_callback": RetryStaleTrial(s.max_retry, _tracking(cfg))}
    # sqlite: wait for another worker's write lock instead of failing; servers: drop dead connections.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)
    except Exception as err:  # noqa: BLE001 - a clean, redacted message instead of a driver traceback
        raise ConfigError(f"sweep.storage {redact(url)}: {redact(str(err)).splitlines()[0]}") from None


def _tracking(cfg: Config) -> str | None:
    return tracking_uri(cfg) if cfg.tracking.enabled else None


def _sampler(cfg: Config, worker: int) -> optuna.samplers.BaseSampler:
    s = cfg.sweep
    seed = None if s.seed is None else s.seed + worker  # workers must not propose the same points
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=s.seed, scramble=True)  # one sequence shared by workers
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.startup_trials)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials)


def _pruner(cfg: Config) -> optuna.pruners.BasePruner:
    s = cfg.sweep
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                           n_warmup_steps=s.pruner_warmup_steps)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.pruner_warmup_steps))
    return optuna.pruners.NopPruner()


def load_study(cfg: Config, worker: int = 0, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the study or continue it (load_if_exists), in `storage` (default: open_storage(cfg))."""
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    return optuna.create_study(study_name=cfg.sweep.study, storage=storage or open_storage(cfg), direction="maximize",
                               sampler=_sampler(cfg, worker), pruner=_pruner(cfg), load_if_exists=True)


def suggest(trial: optuna.Trial, key: str, space: ParamSpace) -> Any:
    if space.type == "categorical":
        return trial.suggest_categorical(key, space.choices)
    if space.type == "int":
        return trial.suggest_int(key, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)
    return trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)


def trial_config(cfg: Config, values: dict[str, Any]) -> Config:
    """The trial's config: the sweep's schedule, then the sampled values (never by rewriting YAML)."""
    return params.replace(cfg, {**cfg.sweep.overrides, **values})


def final_miou(cfg: Config, summary: FitSummary) -> float:
    from ddfp.methods import reported_model  # torch: only where a trial has trained

    if not summary.evaluations:
        raise ValueError("the sweep's schedule ends before any evaluation (check sweep.overrides)")
    row = summary.evaluations[-1]
    evaluated = {k.removeprefix("val_miou_") for k in row if k.startswith("val_miou_")}
    return float(row[f"val_miou_{reported_model(cfg, evaluated)}"])


def retried_trial(trial: optuna.Trial) -> int | None:
    """The number of the trial this one retries (a heartbeat-stale trial's retry), else None."""
    # Optuna keeps it in the trial's system attributes, which a live Trial no longer exposes; its
    # public reader takes the FrozenTrial, found by number among the study's running trials.
    running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    frozen = next(t for t in running if t.number == trial.number)
    return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def run_trial(trial: optuna.Trial, cfg: Config, paths: SweepPaths, parent_run_id: str | None) -> float:
    """The objective: train on the sweep's schedule, report each evaluation, return the final mIoU."""
    from pipeline.train.fit import fit
    from pipeline.train.trainer import RunPaths

    values = {key: suggest(trial, key, space) for key, space in cfg.sweep.params.items()}
    retry_of = retried_trial(trial)
    run_dir = paths.runs / f"trial_{trial.number if retry_of is None else retry_of}"  # a retry resumes
    for key, value in {"run_dir": str(run_dir), "worker_pid": os.getpid(), "host": socket.gethostname()}.items():
        trial.set_user_attr(key, value)
    tcfg = trial_config(cfg, values)
    uri = _tracking(tcfg)
    tracker = TrialTracker(uri, trial, cfg.sweep.study, retry_of) if uri else None

    def on_eval(epoch: int, miou: float) -> None:
        trial.report(miou, epoch)
        if trial.should_prune():
            if tracker is not None:
                tracker.pruned = True
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (val mIoU {miou:.2f})")

    t0 = time.time()
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"trial {trial.number}: {shown} -> {run_dir}", file=sys.stderr, flush=True)
    state, value = "FAIL", None
    try:
        summary = fit(tcfg, RunPaths(paths.data_root, paths.split_dir, run_dir, paths.weights),
                      tracker or NullTracker(), progress=False, parent_run_id=parent_run_id, on_eval=on_eval)
        value, state = final_miou(tcfg, summary), "COMPLETE"
        return value
    except optuna.TrialPruned:
        state = "PRUNED"
        raise
    finally:
        if tracker is not None:
            tracker.close_trial(state, value)
        print(f"trial {trial.number}: {state}" + (f" val mIoU {value:.2f}" if value is not None else "")
              + f" ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


class AskLock:
    """An exclusive flock on a file of the sweep's run directory: held from the budget check until
    the trial exists (released by the objective), so parallel workers never start a trial too many."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a+")  # noqa: SIM115 - held for the worker's lifetime
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.held = False


def budget(study: optuna.Study, n_trials: int) -> tuple[int, bool, bool]:
    """(trials still to start, any WAITING retry, any RUNNING). A FAIL trial that was retried does not
    count: its retry stands for it."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    logical = [t for t in trials if not (t.state == TrialState.FAIL and t.number in retried)]
    states = {t.state for t in trials}
    return n_trials - len(logical), TrialState.WAITING in states, TrialState.RUNNING in states


def run_worker(cfg: Config, paths: SweepPaths, parent_run_id: str | None, worker: int = 0) -> int:
    """Run trials until the study has sweep.n_trials (or the timeout passes); returns how many ran here."""
    storage = open_storage(cfg)
    study = load_study(cfg, worker, storage)
    lock = AskLock(paths.runs / ".ask.lock")
    heartbeat = cfg.sweep.heartbeat_interval_s if isinstance(storage, optuna.storages.RDBStorage) else None
    deadline = time.monotonic() + (cfg.sweep.timeout_min or float("inf")) * 60
    objective = lambda t: (lock.release(), run_trial(t, cfg, paths, parent_run_id))[1]  # noqa: E731
    ran = 0
    while time.monotonic() < deadline:
        lock.acquire()
        try:
            optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL + a WAITING retry
            left, waiting, running = budget(study, cfg.sweep.n_trials)
            if left > 0 or waiting:
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
                ran += 1
                continue
        finally:
            lock.release()
        if not (running and heartbeat):
            break
        time.sleep(heartbeat)  # another worker's trial may still go stale and need a retry here
    return ran


__all__ = ["SweepPaths", "SweepError", "storage_url", "is_journal", "refuse_journal_workers", "open_storage", "load_study", "trial_config", "run_trial",
           "run_worker", "budget", "open_parent_run"]
