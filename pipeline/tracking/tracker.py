"""Experiment tracking: one MLflow run per (dataset, split, method, seed), logged once, from rank 0.

The trainer and the evaluate stage talk to the `Tracker` protocol only. `MlflowTracker` never stops
training: a failing call (server down, network cut) prints one warning for the outage, and what
cannot be sent waits in the run directory's spool (pipeline.tracking.spool) until the server answers
again, at the latest at the end of the training or in the evaluate stage.

Run identity survives restarts: the run id is saved in the training checkpoint, so a resumed or
requeued job continues the same run. Runs of one configuration (all splits of a `dvc repro`, all
seeds) hang under a parent run found by a hash of that configuration; a sweep passes its own parent.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.files import write_json_atomic
from pipeline.params import Config
from pipeline.secrets import first_line, redact
from pipeline.tracking.identity import (GROUP_TAG, KIND_TAG, PARENT_TAG, RunInfo, param_strings, run_note,
                                         run_spec, tracking_uri)
from pipeline.tracking.model_export import register_version
from pipeline.tracking.protocol import NullTracker, Tracker
from pipeline.tracking.spool import Spool
from pipeline.tracking.store import store_lock
from pipeline.tracking.system_metrics import SystemMetrics, sampling_interval

MAX_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
RECONNECT_S = (5.0, 300.0)  # the first wait after a failed call, and the longest (it doubles per failure)
RUN_RECORD = "tracking_run.json"  # in the run directory: the id of the run its tracker created


class MlflowTracker:
    """A live MLflow run that never stops training and loses nothing it was asked to log.

    A failing call (after MLflow's own HTTP retries, a few seconds) starts an outage: one warning,
    then every call goes to the spool at once, and the backlog is sent, in order, at the next retry
    (after RECONNECT_S[0] seconds, doubling up to RECONNECT_S[1]), at `finish` and at `flush`.
    """

    def __init__(self, uri: str, run_dir: Path | None = None) -> None:
        # MLflow's defaults retry an unreachable server for minutes; training must not wait that long.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.uri, self.run_dir = uri, run_dir
        self._client: Any = None  # opened by the first call (see `client`)
        self.run_id: str | None = None
        self.spool = Spool(run_dir)
        self.system = SystemMetrics(uri)  # sampling starts with a started run (not an attached one)
        self._pending_create = self.spool.has("create")  # a run that exists only in the spool so far
        # A spool left by an earlier process (killed during an outage) goes out with the first call.
        self._down, self._warned = len(self.spool) > 0, False
        self._wait, self._next_try = RECONNECT_S[0], 0.0

    @property
    def client(self) -> Any:
        """The store's MlflowClient, opened at the first call that needs it, inside the outage rule:
        opening a new sqlite store migrates its schema, and a second process migrating the same new
        store at the same moment fails (alembic's "expected to match one row"). That failure is an
        outage like any other: the calls wait in the spool and the store is opened again at the retry.
        Two of this project's processes never migrate at once (store_lock): interleaved migrations of
        one sqlite file can leave it half-migrated for good."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            with store_lock(self.uri):
                self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def active(self) -> bool:
        """False during an outage (calls are kept, not sent)."""
        return not self._down

    # ---- outages -----------------------------------------------------------------------------
    def _attempt(self, what: str, fn, *args, **kwargs) -> tuple[bool, Any]:
        """(done, fn's result): not done only when the store could not be reached, so the call
        can be sent later; a call the store refused (a client error) is done, with a warning."""
        from mlflow.exceptions import MlflowException

        try:
            return True, fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking is never allowed to stop training
            if isinstance(err, MlflowException) and 400 <= err.get_http_status_code() < 500:
                tqdm.write(f"warning: MLflow at {redact(self.uri)} refused {what} ({first_line(err)}); dropped")
                return True, None
            self._outage(what, err)
            return False, None

    def _outage(self, what: str, err: Exception) -> None:
        self._down, self._next_try = True, time.monotonic() + self._wait
        self._wait = min(2 * self._wait, RECONNECT_S[1])
        if self._warned:
            return
        self._warned = True
        tqdm.write(f"warning: MLflow tracking at {redact(self.uri)} failed ({what}: {first_line(err)}); training goes on, "
                   f"what it logs is kept in {self.spool} and sent when the server answers again")

    def _online(self, force: bool = False) -> bool:
        """Whether calls go out now; after an outage (once a retry is due) the backlog goes first."""
        if not self._down:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        entries, created = self.spool.read(), None
        for i, entry in enumerate(entries):
            if not self._attempt(f"send a kept {entry['op']}", self._send, entry)[0]:
                self.spool.replace([{**e, "run": e.get("run") or created} for e in entries[i:]])
                return False
            created = self.run_id if entry["op"] == "create" else created
        self.spool.replace([])
        self._down, self._warned, self._pending_create, self._wait = False, False, False, RECONNECT_S[0]
        if entries:
            tqdm.write(f"MLflow at {redact(self.uri)} answers again: sent the {len(entries)} kept tracking calls")
            self.system.restart(self.run_id)
        return True

    def guard(self, what: str, fn, *args, **kwargs) -> Any:
        """fn(*args) against this store (a call of self.client) under the outage rule: its result, or
        None (and the call dropped, with the outage's one warning) while the store does not answer."""
        return self._attempt(what, fn, *args, **kwargs)[1] if self._online() else None

    def _call(self, what: str, entry: dict[str, Any]) -> None:
        """Send one call now, or keep it for later."""
        if not (self._online() and self._attempt(what, self._send, entry)[0]):
            self._keep(entry)

    def _keep(self, entry: dict[str, Any]) -> None:
        if entry["op"] == "artifact":
            entry = {**entry, "file": str(self.spool.keep_file(Path(entry["file"])))}
        self._pending_create = self._pending_create or entry["op"] == "create"
        self.spool.append(entry)

    def _has_run(self) -> bool:
        return self.run_id is not None or self._pending_create

    # ---- what is sent ------------------------------------------------------------------------
    def _send(self, entry: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        op, run = entry["op"], entry.get("run") or self.run_id
        if op == "create":
            self._create(entry["spec"])
        elif op == "params":
            self._log_params(run, entry["params"], entry["note"])
        elif op == "metrics":
            batch = [Metric(k, v, entry["ts"], entry["step"]) for k, v in entry["metrics"].items()]
            self.client.log_batch(run, metrics=batch)
        elif op == "tags":
            self.client.log_batch(run, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
        elif op == "artifact":  # a file, or a folder's files (a logged model) under entry["dir"]
            log = self.client.log_artifacts if Path(entry["file"]).is_dir() else self.client.log_artifact
            log(run, entry["file"], entry["dir"])
        elif op == "register":
            register_version(self.client, run, entry["name"], entry["tags"])
        elif op == "end":
            self.client.set_terminated(run, entry["status"])
            parent_id = self.client.get_run(run).data.tags.get(PARENT_TAG)
            if parent_id and entry["status"] == "FINISHED":  # the parent is as finished as its latest child
                self.client.set_terminated(parent_id, "FINISHED")

    def experiment_id(self, name: str) -> str:
        """The id of the experiment `name`, created if it does not exist yet."""
        exp = self.client.get_experiment_by_name(name)
        if exp:
            return exp.experiment_id
        # An embedded sqlite store keeps its artifacts beside it (MLflow's default is ./mlruns of
        # whatever directory the first run happened to start in).
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _find_parent(self, experiment_id: str, spec: dict[str, Any]) -> str:
        group = spec["tags"][GROUP_TAG]
        found = self.client.search_runs(
            [experiment_id], f"tags.{GROUP_TAG} = '{group}' and tags.{KIND_TAG} = 'parent'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {GROUP_TAG: group, KIND_TAG: "parent", "profile": spec["tags"]["profile"]}
        return self.client.create_run(experiment_id, run_name=spec["parent_name"], tags=tags).info.run_id

    def _create(self, spec: dict[str, Any]) -> None:
        """Create the run (under its parent) from a run_spec; the run directory records its id."""
        experiment_id = self.experiment_id(spec["experiment"])
        parent_id = spec["parent"] or self._find_parent(experiment_id, spec)
        run = self.client.create_run(experiment_id, run_name=spec["name"], tags={**spec["tags"], PARENT_TAG: parent_id})
        self.run_id = run.info.run_id
        if self.run_dir is not None:
            write_json_atomic({"run_id": self.run_id}, self.run_dir / RUN_RECORD)

    def _log_params(self, run_id: str, params: dict[str, str], note: str) -> None:
        from mlflow.entities import Param, RunTag

        batch = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(run_id, params=batch[i:i + MAX_BATCH])
        self.client.log_batch(run_id, tags=[RunTag("mlflow.note.content", note)])

    def _start(self, cfg: Config, info: RunInfo, resume_id: str | None, parent_id: str | None) -> None:
        if resume_id is not None:
            self.client.update_run(resume_id, status="RUNNING")
            self.run_id = resume_id  # params were logged when the run began; MLflow forbids changing them
            return
        self._create(run_spec(cfg, info, parent_id))
        self._log_params(self.run_id, param_strings(cfg, info), run_note(cfg, info))

    # ---- the Tracker protocol ----------------------------------------------------------------
    def start(self, cfg: Config, info: RunInfo, resume_id: str | None = None, parent_id: str | None = None) -> None:
        self.system.interval_s = sampling_interval(cfg.tracking)
        if resume_id is None and self._pending_create:
            # A killed training whose run exists only in the spool: create it, then go on in it.
            if not self._online(force=True):
                return
            resume_id = self.run_id
        if self._online() and self._attempt("start run", self._start, cfg, info, resume_id, parent_id)[0]:
            self.system.start(self.run_id, resume=resume_id is not None)
            return
        if resume_id is not None:
            self.run_id = resume_id  # the run exists; finish sends its status
            return
        if self.run_id is None:
            self._keep({"op": "create", "spec": run_spec(cfg, info, parent_id)})
        self._keep({"op": "params", "run": self.run_id, "params": param_strings(cfg, info), "note": run_note(cfg, info)})

    def attach(self, run_id: str | None) -> None:
        """Log into an existing run (the evaluate stage adds to the training run): `run_id`, else the
        run this run directory's tracker created (when the checkpoint could not record it)."""
        record = self.run_dir / RUN_RECORD if self.run_dir is not None else None
        if run_id is None and not self._pending_create and record is not None and record.is_file():
            run_id = json.loads(record.read_text())["run_id"]
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if self._has_run():
            values = {k: float(v) for k, v in metrics.items() if v is not None}
            entry = {"op": "metrics", "run": self.run_id, "metrics": values, "step": step, "ts": int(time.time() * 1000)}
            self._call("log metrics", entry)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._has_run():
            self._call("log artifact", {"op": "artifact", "run": self.run_id, "file": str(path), "dir": artifact_path})

    def register_model(self, name: str, tags: dict[str, str]) -> None:
        if self._has_run():
            self._call("register model", {"op": "register", "run": self.run_id, "name": name, "tags": tags})

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._has_run():
            self._call("set tags", {"op": "tags", "run": self.run_id, "tags": {k: redact(str(v)) for k, v in tags.items()}})

    def flush(self) -> None:
        """Send what is kept now (the end of a training, the evaluate stage); say where the rest waits."""
        self._online(force=True)
        self._say_pending()

    def finish(self, status: str = "FINISHED") -> None:
        self.system.stop()
        if self._has_run():
            self._online(force=True)  # the last chance of this process: the backlog first, in order
            self._call("end run", {"op": "end", "run": self.run_id, "status": status})
            self._say_pending()

    def terminate(self, run_id: str, status: str, end_time: int | None = None) -> None:
        """End any run of this store (not only this tracker's) as `status`; dropped during an outage."""
        if run_id == self.run_id:  # a sweep trial's tracker ends its own run here, not in finish
            self.system.stop()
        self.guard("end run", lambda: self.client.set_terminated(run_id, status, end_time))

    def _say_pending(self) -> None:
        if self._down:
            tqdm.write(f"tracking: {len(self.spool)} calls wait in {self.spool} for MLflow at {redact(self.uri)}; "
                       "`ddfp evaluate` of this run sends them")


def open_tracker(cfg: Config, rank: int = 0, run_dir: Path | None = None) -> MlflowTracker | NullTracker:
    """The tracker of this process: MLflow on rank 0 when tracking is enabled, else a null tracker.
    run_dir (the training's directory) holds what an outage kept from being sent."""
    if rank != 0 or not cfg.tracking.enabled:
        return NullTracker()
    return MlflowTracker(tracking_uri(cfg), run_dir)


__all__ = ["Tracker", "NullTracker", "MlflowTracker", "open_tracker", "RECONNECT_S", "RUN_RECORD"]
