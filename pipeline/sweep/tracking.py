"""MLflow for sweeps: a parent run per study (found by its study tag, so reruns and every worker share
it) and a child run per trial, written from the objective (not optuna-integration's deprecated
MLflowCallback, which logs only when a trial ends).

A child run carries the trial's number and sampled values (params), every evaluation (fit logs
val_miou_* per evaluation), the final `val_miou`, the tag `trial_state` (COMPLETE, PRUNED, FAIL) and
the run status FINISHED, KILLED (pruned, or its worker died) or FAILED.
"""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
from tqdm import tqdm

from pipeline.params import Config
from pipeline.secrets import redact, redact_values
from pipeline.tracking.identity import KIND_TAG, RunInfo, experiment_name, tracking_uri
from pipeline.tracking.tracker import MlflowTracker

STUDY_TAG, STATE_TAG = "ddfp_study", "trial_state"
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class TrialTracker(MlflowTracker):
    """The child run of one trial. `pruned` turns fit's FAILED (an exception stopped it) into KILLED."""

    def __init__(self, uri: str, trial: optuna.Trial, study: str, retry_of: int | None) -> None:
        super().__init__(uri)
        self.trial, self.study, self.retry_of, self.pruned = trial, study, retry_of, False

    def _start(self, cfg: Config, info: RunInfo, resume_id: str | None, parent_id: str | None) -> None:
        from mlflow.entities import Param

        super()._start(cfg, info, resume_id, parent_id)  # a retry resumes the run of its checkpoint
        n = self.trial.number
        tags = {KIND_TAG: "sweep_trial", STUDY_TAG: self.study, "trial_number": str(n), STATE_TAG: "RUNNING",
                "mlflow.runName": f"{self.study}-trial{n}"}
        if self.retry_of is not None:
            tags["retry_of"] = str(self.retry_of)
        self.set_tags(tags)
        if resume_id is None:
            params = {"trial_number": n, "study": self.study,
                      **{f"sampled.{k}": v for k, v in self.trial.params.items()}}
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.trial.set_user_attr("mlflow_run_id", self.run_id)

    def finish(self, status: str = "FINISHED") -> None:
        # Only this run: the study's parent stays open until the sweep ends.
        if self.run_id is not None:
            self.terminate(self.run_id, "KILLED" if self.pruned else status)

    def close_trial(self, state: str, value: float | None) -> None:
        if self.run_id is None:
            return
        if value is not None:
            self.log_metrics({"val_miou": value}, self.trial.number)
        self.set_tags({STATE_TAG: state})
        self.terminate(self.run_id, RUN_STATUS[state])


class RetryStaleTrial:
    """Heartbeat-stale trial (its worker died): queue a retry with the same values and reported
    evaluations (Optuna's RetryHeartbeatStaleTrialCallback) and close its MLflow run as KILLED."""

    def __init__(self, max_retry: int, uri: str | None) -> None:
        self.max_retry, self.uri = max_retry, uri

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(self.max_retry, inherit_intermediate_values=True)
        retry(study, trial)
        tqdm.write(f"trial {trial.number}: its worker stopped sending heartbeats; queued for a retry")
        run_id = trial.user_attrs.get("mlflow_run_id")
        if self.uri and run_id:
            tracker = MlflowTracker(self.uri)
            tracker.attach(run_id)
            tracker.set_tags({STATE_TAG: "FAIL", "failure": "worker died (heartbeat stale)"})
            tracker.terminate(run_id, "KILLED")


def open_parent_run(cfg: Config, storage: str) -> str | None:
    """Find the study's parent run (tags ddfp_kind=sweep, ddfp_study=<name>) or create it; None when
    tracking is off or unreachable. `storage` is shown redacted."""
    if not cfg.tracking.enabled:
        return None
    tracker = MlflowTracker(tracking_uri(cfg))

    def find_or_create() -> str:
        from mlflow.entities import Param

        exp = tracker.experiment_id(experiment_name(cfg))
        study = cfg.sweep.study
        found = tracker.client.search_runs([exp], f"tags.{KIND_TAG} = 'sweep' and tags.{STUDY_TAG} = '{study}'",
                                           max_results=1)
        if found:
            tracker.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = tracker.client.create_run(exp, run_name=f"sweep-{study}",
                                        tags={KIND_TAG: "sweep", STUDY_TAG: study, "profile": cfg.profile})
        s = cfg.sweep
        params = redact_values({"storage": storage, "split": s.split, "sampler": s.sampler, "pruner": s.pruner,
                                "seed": s.seed, "n_trials": s.n_trials, "profile": cfg.profile,
                                "search_space": json.dumps({k: v.model_dump(exclude_defaults=True)
                                                            for k, v in s.params.items()}),
                                "overrides": json.dumps(s.overrides)})
        tracker.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    return tracker.guard("open the sweep's parent run", find_or_create)


def finish_parent_run(cfg: Config, run_id: str | None, summary: dict[str, Any], files: list) -> None:
    """Best value and trial counts as metrics, best values as tags, the outputs as artifacts."""
    if run_id is None:
        return
    tracker = MlflowTracker(tracking_uri(cfg))
    tracker.attach(run_id)
    step = summary["n_trials"]
    tracker.log_metrics({f"n_{k.lower()}": v for k, v in summary["states"].items()}, step)
    if summary.get("best_value") is not None:
        tracker.log_metrics({"best_val_miou": summary["best_value"]}, step)
        tracker.set_tags({"best_trial": str(summary["best_trial"]),
                          **{f"best.{k}": f"{v:.6g}" if isinstance(v, float) else str(v)
                             for k, v in summary["best_params"].items()}})
    for path in files:
        tracker.log_artifact(path, "sweep")
    tracker.terminate(run_id, "FINISHED", int(time.time() * 1000))
    if not tracker.active:
        tqdm.write(redact(f"warning: the sweep's parent run {run_id} may be incomplete"))


__all__ = ["TrialTracker", "RetryStaleTrial", "open_parent_run", "finish_parent_run", "STUDY_TAG", "STATE_TAG"]
