"""`ddfp sweep dashboard` (a real optuna-dashboard in headless Chromium), `ddfp sweep promote` (into
params.yaml, or a DVC experiment in a throw-away git+dvc repo), the study fingerprint that refuses a
changed rerun, and the refusal of a journal file for more than one worker. Studies are written with
Optuna directly (no training): what is tested is what the commands do with them."""

import contextlib
import difflib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from ddfp.config import ConfigError
from pipeline import params
from pipeline.errors import UsageError
from pipeline.evidence.mlflow_picture import chromium, missing_browser, wait_for_text
from pipeline.sweep.fingerprint import FINGERPRINT_ATTR, check_fingerprint, fingerprint
from pipeline.sweep.launch import run_sweep
from pipeline.sweep.promote import exp_command
from pipeline.sweep.study import SweepPaths, load_study, refuse_journal_workers
from tests.helpers.mlflow_server import free_port
from tests.helpers.postgres import pg_url
from tests.helpers.project import ROOT
from tests.helpers.services import require_service

DDFP = [sys.executable, "-m", "pipeline.cli"]
SPACE = {"perturb.eps": FloatDistribution(0.5, 16.0, log=True), "train.conf_thresh": FloatDistribution(0.5, 0.99)}


def ddfp(*args, cwd, env=None, timeout=120):
    return subprocess.run([*DDFP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def finished_study(storage, name="t", values=((2.0, 0.7, 50.0), (5.5, 0.9, 61.5), (1.0, 0.6, 40.0)),
                   state=TrialState.COMPLETE):
    """A study whose trials searched perturb.eps and train.conf_thresh, as `ddfp sweep` records them."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    for eps, thresh, miou in values:
        study.add_trial(optuna.create_trial(
            state=state, value=miou if state == TrialState.COMPLETE else None,
            params={"perturb.eps": eps, "train.conf_thresh": thresh}, distributions=SPACE))
    return study


# ---- dashboard ------------------------------------------------------------------------------------

@contextlib.contextmanager
def dashboard(tmp_path, storage, timeout_s=60):
    """`ddfp sweep dashboard` on a free port until it answers; stopped with Ctrl-C (SIGINT) after."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w+")
    proc = subprocess.Popen([*DDFP, "sweep", "dashboard", "--profile", "smoke", "--set", f"sweep.storage={storage}",
                             "--port", str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "dashboard did not answer"
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/api/studies", timeout=2).ok:
                    break
            time.sleep(0.3)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.mark.browser
def test_the_dashboard_shows_the_study_and_its_trials(tmp_path):
    require_service(missing_browser())
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = finished_study(storage, "dash-study")
    with dashboard(tmp_path, storage) as (url, proc):
        driver = chromium()
        try:
            driver.get(f"{url}/dashboard/")
            assert "dash-study" in wait_for_text(driver, ["dash-study"])
            driver.get(f"{url}/dashboard/studies/{study._study_id}/trials")
            body = wait_for_text(driver, ["3 Trials"])
            assert "3 Trials" in body and "Trial 2" in body, body[:1500]
        finally:
            driver.quit()
    out = (tmp_path / "dashboard.log").read_text()
    assert proc.returncode == 0, out  # Ctrl-C is the way to stop it, not a failure
    assert f"optuna-dashboard on {storage}: {url}/dashboard/" in out


def test_the_dashboard_reads_a_journal_file_and_never_shows_a_password(tmp_path):
    finished_study(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "sweep.log"))), "journal-study")
    with dashboard(tmp_path, "journal:sweep.log") as (url, _):  # relative to the project directory
        names = [s["study_name"] for s in requests.get(f"{url}/api/studies", timeout=10).json()["study_summaries"]]
        assert names == ["journal-study"]
    # A server that cannot be reached: the one-line error shows the storage with its password masked.
    secret = "hunter2-not-shown"
    res = ddfp("sweep", "dashboard", "--profile", "smoke", "--port", str(free_port()), cwd=tmp_path,
               env={"OPTUNA_STORAGE": f"postgresql+psycopg2://ddfp:{secret}@127.0.0.1:9/db"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "ddfp:***@127.0.0.1:9/db" in res.stderr and secret not in res.stdout + res.stderr


# ---- promote --------------------------------------------------------------------------------------

def promote(tmp_path, storage, *extra, study="t"):
    return ddfp("sweep", "promote", "--params", str(tmp_path / "params.yaml"), "--study", study,
                "--set", f"sweep.storage={storage}", *extra, cwd=tmp_path)


def test_promote_writes_the_best_values_keeping_comments_and_layout(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace(
        "perturb:\n", "perturb:\n  # the radius of the step down the density (kept by promote)\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    finished_study(storage)
    old = params.load(tmp_path / "params.yaml")
    res = promote(tmp_path, storage)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"perturb.eps: {old.perturb.eps:g} -> 5.5" in res.stdout
    assert f"train.conf_thresh: {old.train.conf_thresh:g} -> 0.9" in res.stdout
    new = (tmp_path / "params.yaml").read_text()
    changed = [line for line in difflib.ndiff(text.splitlines(), new.splitlines()) if line[:2] in ("+ ", "- ")]
    assert changed == [f"-   eps: {old.perturb.eps}", "+   eps: 5.5",
                       f"-   conf_thresh: {old.train.conf_thresh}", "+   conf_thresh: 0.9"], changed
    assert "  # the radius of the step down the density (kept by promote)\n  eps: 5.5\n" in new
    cfg = params.load(tmp_path / "params.yaml")
    assert (cfg.perturb.eps, cfg.train.conf_thresh) == (5.5, 0.9)


def test_promote_refuses_a_study_without_a_finished_trial(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    finished_study(storage, "failed", values=((2.0, 0.7, None),), state=TrialState.FAIL)
    res = promote(tmp_path, storage, study="failed")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"study 'failed' in {storage} has no finished (COMPLETE) trial (FAIL 1)" in res.stderr
    res = promote(tmp_path, storage, study="nope")
    assert res.returncode == 2 and "study 'nope'" in res.stderr and "no such study" in res.stderr
    assert (tmp_path / "params.yaml").read_text() == before


@pytest.mark.postgres
def test_promote_s_refusal_masks_the_storage_password(tmp_path, postgres):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    secret = postgres["password"]
    finished_study(pg_url(postgres, secret), "pg-empty", values=())
    res = ddfp("sweep", "promote", "--params", str(tmp_path / "params.yaml"), "--study", "pg-empty", cwd=tmp_path,
               env={"OPTUNA_STORAGE": pg_url(postgres, secret)})
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{postgres['user']}:***@" in res.stderr and "no finished (COMPLETE) trial (no trials)" in res.stderr
    assert secret not in res.stdout + res.stderr


def test_the_dvc_experiment_command(tmp_path):
    values = {"perturb.eps": 5.5, "train.conf_thresh": 0.9}
    assert exp_command(values) == ["dvc", "exp", "run", "-S", "perturb.eps=5.5", "-S", "train.conf_thresh=0.9"]
    assert exp_command({"model.backbone": "resnet101", "model.pretrained": False}, Path("other.yaml"))[3:] == [
        "-S", "other.yaml:model.backbone=resnet101", "-S", "other.yaml:model.pretrained=false"]


@pytest.mark.slow
def test_promote_exp_runs_a_dvc_experiment(tmp_path):
    """In a throw-away git+dvc repo whose one stage copies the two params to a file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "dvc.yaml").write_text(
        "stages:\n  show:\n    cmd: python -c \"import yaml; p = yaml.safe_load(open('params.yaml')); "
        "open('out.txt', 'w').write(f\\\"{p['perturb']['eps']} {p['train']['conf_thresh']}\\\")\"\n"
        "    params: [perturb.eps, train.conf_thresh]\n    outs: [out.txt]\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                [*git, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    finished_study(storage)
    res = ddfp("sweep", "promote", "--exp", "--study", "t", "--set", f"sweep.storage={storage}", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "dvc exp run -S perturb.eps=5.5 -S train.conf_thresh=0.9" in res.stdout
    assert (repo / "out.txt").read_text() == "5.5 0.9"  # the experiment ran with the promoted values


# ---- fingerprint ----------------------------------------------------------------------------------

def test_a_rerun_with_another_schedule_or_space_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = params.load(None, "smoke", {"sweep.storage": storage, "sweep.study": "fp"})
    check_fingerprint(load_study(cfg), cfg)  # what run_sweep does when it creates the study
    recorded = optuna.load_study(study_name="fp", storage=storage).user_attrs[FINGERPRINT_ATTR]
    assert recorded == fingerprint(cfg) and recorded["split"] == "8" and recorded["profile"] == "smoke"
    assert "schedule.perturb.eps" not in recorded and recorded["schedule.train.epochs"] == 2
    assert recorded["schedule.eval.model"] == "student" and "schedule.run.device" not in recorded
    # Same fingerprint: more trials, more workers, another sampler or pruner continue the study.
    more = params.replace(cfg, {"sweep.n_trials": 40, "sweep.workers": 3, "sweep.sampler": "random",
                                "sweep.pruner": "none"})
    check_fingerprint(load_study(more), more)
    space = {key: value.model_dump() for key, value in cfg.sweep.params.items()}
    space["perturb.eps"]["high"] = 8.0
    changed = params.replace(cfg, {"sweep.overrides": {**cfg.sweep.overrides, "train.epochs": 3, "run.eval_every": 2},
                                   "sweep.params": space})
    paths = SweepPaths(*(tmp_path / d for d in ("data", "splits", "weights", "runs", "reports")))
    with pytest.raises(UsageError) as err:
        run_sweep(changed, paths)  # refused before any trial: none of the paths exists
    message = str(err.value)
    assert f"study 'fp' in {storage}" in message and "Pick a new --study name" in message
    assert "schedule.train.epochs: 2 -> 3" in message
    assert "schedule.run.eval_every: 1 -> 2" in message
    assert '"high": 16.0' in message and '"high": 8.0' in message
    assert not (tmp_path / "runs").exists() and len(optuna.load_study(study_name="fp", storage=storage).trials) == 0


# ---- journal storage ------------------------------------------------------------------------------

def test_a_journal_file_is_refused_for_more_than_one_worker(tmp_path, monkeypatch):
    # Optuna 5.0: the journal storage has no heartbeat. Should a later Optuna add one, this fails, and
    # the journal can get the RDB storages' heartbeat and retries instead of the refusal.
    assert not issubclass(optuna.storages.JournalStorage, optuna.storages._heartbeat.BaseHeartbeat)
    monkeypatch.chdir(tmp_path)
    cfg = params.load(None, "smoke", {"sweep.storage": "journal:sweep.log", "sweep.study": "j"})
    paths = SweepPaths(*(tmp_path / d for d in ("data", "splits", "weights", "runs", "reports")))
    for how, overrides in (("sweep.workers=2", {"sweep.workers": 2}), ("a SLURM job array", {"run.launcher": "slurm"})):
        with pytest.raises(ConfigError) as err:
            run_sweep(params.replace(cfg, overrides), paths)
        message = str(err.value)
        assert f"journal file cannot serve {how}" in message and "no heartbeat" in message
        assert "sqlite on a local disk" in message and "PostgreSQL" in message
    assert not (tmp_path / "sweep.log").exists()  # refused before the storage was opened
    refuse_journal_workers(cfg)  # one local worker may use it
    refuse_journal_workers(params.replace(cfg, {"sweep.storage": f"sqlite:///{tmp_path / 'o.db'}",
                                                "sweep.workers": 2}))
