"""Stops that are not a time limit, on the real one-node cluster, each followed by the resume: SLURM's
own requeue (SIGTERM, then SIGKILL after KillWait) mid-epoch, a bare SIGTERM (clusters that preempt
without USR2) and a resubmission, USR2 during an evaluation and a requeue during a checkpoint write. Every run tracks
into its own MLflow store: the resumed job must continue the same MLflow run, and end at the same
iteration count as an uninterrupted run (60: 6 epochs of 10)."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.slurm import outcome, submit_training
from pipeline.squeue import ENDED, queue_state
from tests.helpers.preempt import SlowCheckpointJob, SlowEvaluationJob
from tests.helpers.project import ROOT
from tests.helpers.slurm import run_paths, smoke

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TOTAL = 60


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def start(tmp_path, data, uri, job=None):
    # PYTHONPATH: the job unpickles the tests' job classes (tests.helpers.preempt).
    cfg = smoke(tmp_path, **{"tracking.enabled": True, "tracking.uri": uri, "train.epochs": 6, "run.log_every": 2,
                             "slurm.setup": [f"source {ROOT}/slurm/env.sh", f"export PYTHONPATH={ROOT}"]})
    return submit_training(cfg, {"8": run_paths(data, tmp_path / "run")}, job=job)[0]


def release(job) -> None:
    # A requeued job is held ~121 s (BeginTime); tests do not wait for it.
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], capture_output=True)


def wait_until(condition, what: str, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def iteration(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["iteration"]
    except (OSError, ValueError, KeyError):
        return 0


def the_train_run(uri: str):
    """The store's one training run (a parent run groups it); more than one would be a new run."""
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.ddfp_kind = 'train'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def finish(job) -> tuple[object, str]:
    """Wait (releasing requeue holds) until the job wrote its result; its result and whole log."""
    def done() -> bool:
        release(job)
        return job.paths.result_pickle.exists()
    wait_until(done, f"job {job.job_id} to finish (log {job.paths.stderr})", timeout=300)
    result = outcome(job, "8")
    paths = job.task(0).paths
    return result, Path(paths.stdout).read_text() + Path(paths.stderr).read_text()


def assert_resumed(result, log: str, uri: str, run_id: str, stopped: str) -> list[int]:
    assert stopped in log, log[-3000:]
    resumed = [int(n) for n in re.findall(r"resumed \S+ at iteration (\d+)", log)]
    assert resumed and all(n > 0 for n in resumed), log[-3000:]
    assert result.iterations == TOTAL
    run = the_train_run(uri)
    assert run.info.run_id == run_id == result.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")]
    assert max(steps) == TOTAL and len(steps) == len(set(steps))  # every logged iteration once, to the end
    return resumed


def running_run_id(uri: str, run_dir: Path) -> str:
    wait_until(lambda: iteration(run_dir) >= 12, "iteration 12 (mid epoch 1)")
    run = the_train_run(uri)
    assert run.info.status == "RUNNING"
    return run.info.run_id


def test_scontrol_requeue_mid_epoch_resumes_the_same_run(cluster, tiny_data, tmp_path, uri):
    job = start(tmp_path, tiny_data, uri)
    run_id = running_run_id(uri, tmp_path / "run")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)  # SIGTERM now, SIGKILL after KillWait
    result, log = finish(job)
    assert_resumed(result, log, uri, run_id, "on request (SIGTERM); exiting")


def test_a_bare_sigterm_saves_where_it_is_and_a_resubmission_resumes_there(cluster, tiny_data, tmp_path, uri):
    # A cluster that preempts with SIGTERM alone: the job must save where it is (submitit's own
    # handler ignores SIGTERM, so the kill after the grace time would lose everything since the last
    # checkpoint). The job is not requeued (a SIGTERM may be a cancel): the resubmitted run goes on.
    job = start(tmp_path, tiny_data, uri)
    run_id = running_run_id(uri, tmp_path / "run")
    subprocess.run(["scancel", "--signal=TERM", job.job_id], check=True)  # a signal only
    log_file = Path(job.task(0).paths.stderr)
    wait_until(lambda: "exiting: SLURM requeues" in log_file.read_text(), "the job to save and exit")
    stopped_at = int(re.search(r"stopped at iteration (\d+) on request \(SIGTERM\)", log_file.read_text()).group(1))
    wait_until(lambda: queue_state(job.job_id) in ENDED, "the job to end")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["iteration"] == stopped_at
    result, log = finish(start(tmp_path, tiny_data, uri))
    assert assert_resumed(result, log_file.read_text() + log, uri, run_id, "on request (SIGTERM)")[0] == stopped_at


def test_usr2_during_an_evaluation_stops_it_and_the_resume_evaluates_first(cluster, tiny_data, tmp_path, uri):
    job = start(tmp_path, tiny_data, uri, job=SlowEvaluationJob())
    run_dir = tmp_path / "run"
    wait_until(lambda: (run_dir / "evaluating").exists(), "the first evaluation")
    run_id = the_train_run(uri).info.run_id
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # what a time limit sends
    result, log = finish(job)
    assert assert_resumed(result, log, uri, run_id, "during the evaluation of epoch 1 on request (SIGUSR2); "
                          "requeueing")[0] == 10
    assert [row["epoch"] for row in result.evaluations] == [1, 2, 3, 4, 5, 6]  # the stopped one done once, later


def test_a_requeue_during_a_checkpoint_write_stops_after_it(cluster, tiny_data, tmp_path, uri):
    job = start(tmp_path, tiny_data, uri, job=SlowCheckpointJob())
    run_dir = tmp_path / "run"
    wait_until(lambda: (run_dir / "saving").exists(), "a checkpoint write from iteration 12 on")
    saving = int((run_dir / "saving").read_text())
    run_id = the_train_run(uri).info.run_id
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    result, log = finish(job)
    # The write completes; the loop stops at the next boundary, one iteration later, and saves again.
    assert assert_resumed(result, log, uri, run_id, f"stopped at iteration {saving + 1} on request (SIGTERM)")[0] \
        == saving + 1
