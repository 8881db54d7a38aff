"""Optuna sweeps on the smoke profile: 2 workers on sqlite and PostgreSQL, failing trials, a worker
killed mid-trial (heartbeat retry), a SLURM job array, and no storage password anywhere."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from ddfp import config
from pipeline import params
from pipeline.sweep.launch import run_sweep
from pipeline.sweep.study import (
    SweepPaths,
    budget,
    open_storage,
    retried_trial,
    trial_config,
)
from tests.helpers.project import ROOT
from tests.helpers.postgres import pg_url

FINISHED = {TrialState.COMPLETE, TrialState.PRUNED}


@pytest.fixture(scope="module")
def data(tiny_data):
    """The shared smoke data (conftest's tiny_data), under the name these tests use; the trials start
    from its pretrained weights: from scratch, 10 iterations learn nothing measurable."""
    return tiny_data


def sweep_paths(data, tmp_path):
    return SweepPaths(data / "dataset", data / "splits" / "8", data / "weights" / "mobilenet_v2.pth",
                      tmp_path / "runs" / "t", tmp_path / "reports" / "t")


def sweep(tmp_path, data, *, storage=None, env=None, trials=4, workers=2, study="t", sets=None, wait=True):
    """`ddfp sweep` in a subprocess, everything under tmp_path (its own MLflow store)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "sweep", "--profile", "smoke", "--n-trials", str(trials),
           "--workers", str(workers), "--study", study, "--data", str(data / "dataset"),
           "--splits-dir", str(data / "splits"), "--weights", str(data / "weights" / "mobilenet_v2.pth"), "--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports")]
    for key, value in {**(sets or {}), **({"sweep.storage": storage} if storage else {})}.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def load(url, study="t"):
    return optuna.load_study(study_name=study, storage=url)


def children(tmp_path, study="t"):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("synthetic")
    parent = client.search_runs([exp.experiment_id], f"tags.ddfp_kind = 'sweep' and tags.ddfp_study = '{study}'")
    kids = client.search_runs([exp.experiment_id], f"tags.ddfp_kind = 'sweep_trial' and tags.ddfp_study = '{study}'")
    return client, parent, kids


def check_study(tmp_path, url, trials=4, study="t"):
    """Every trial recorded once, finished, one MLflow child each under the study's parent run."""
    st = load(url, study)
    assert len(st.trials) == trials and [t.number for t in st.trials] == list(range(trials))
    assert {t.state for t in st.trials} <= FINISHED
    client, parent, kids = children(tmp_path, study)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.metrics["best_val_miou"] == pytest.approx(st.best_value)
    by_trial = {int(r.data.tags["trial_number"]): r for r in kids}
    assert sorted(by_trial) == list(range(trials))
    for t in st.trials:
        run = by_trial[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.data.tags["trial_state"] == t.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
        assert float(run.data.params["perturb.eps"]) == pytest.approx(t.params["perturb.eps"])
        evals = client.get_metric_history(run.info.run_id, "val_miou_student")
        assert [m.value for m in evals] == pytest.approx(list(t.intermediate_values.values()), abs=1e-3)
    out = tmp_path / "reports" / study
    nested = {}
    for key, value in st.best_params.items():
        params.set_dotted(nested, key, value)
    assert yaml.safe_load((out / "best_params.yaml").read_text()) == nested
    assert len((out / "trials.csv").read_text().strip().splitlines()) == trials + 1
    assert all((out / f).stat().st_size > 0 for f in ("history.png", "landscape.png"))
    return st


@pytest.mark.slow
def test_two_workers_sqlite_prune_and_continue(data, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    t0 = time.time()
    # eps and the threshold act only from the second epoch on: the learning rate joins the space to
    # give the pruner different curves from the first (supervised) evaluation on.
    space = ("{perturb.eps: {low: 0.5, high: 16.0, log: true}, train.conf_thresh: {low: 0.5, high: 0.99}, "
             "train.lr: {low: 1.0e-5, high: 0.1, log: true}}")
    sets = {"sweep.pruner_warmup_steps": 0, "sweep.sampler": "random", "sweep.params": space}
    res = sweep(tmp_path, data, storage=url, sets=sets)
    print(f"2 workers, 4 trials: {time.time() - t0:.1f} s")
    assert res.returncode == 0, res.stdout + res.stderr
    st = check_study(tmp_path, url)
    assert TrialState.PRUNED in {t.state for t in st.trials}, [(t.state, t.intermediate_values) for t in st.trials]
    assert len({t.user_attrs["worker_pid"] for t in st.trials}) == 2
    assert all(Path(t.user_attrs["run_dir"]).name == f"trial_{t.number}" for t in st.trials)
    # A rerun continues the same study: its 4 trials are there, nothing more runs. Its sampler may
    # differ (not part of the study's fingerprint); its search space may not.
    again = sweep(tmp_path, data, storage=url, sets={"sweep.params": space})
    assert again.returncode == 0 and "0 to start" in again.stderr and len(load(url).trials) == 4


@pytest.mark.slow
def test_the_smoke_sweep_s_sampled_values_reach_the_weights(data, tmp_path, monkeypatch):
    # The README's smoke sweep: two trials with other eps and thresholds must train other weights
    # (pseudo-labels exist, so both values reach the loss), and score differently.
    import torch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = params.load(None, "smoke", {"sweep.storage": url, "sweep.study": "t", "sweep.n_trials": 2,
                                      "sweep.pruner": "none", "sweep.sampler": "random"})
    run_sweep(cfg, sweep_paths(data, tmp_path))
    trials = load(url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params != trials[1].params
    weights = [torch.load(Path(t.user_attrs["run_dir"]) / "last.pt", weights_only=True)["student"] for t in trials]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert trials[0].value != trials[1].value
    _, _, kids = children(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in kids:  # every trial had pseudo-labels and a perturbation of its own size
        confident = [m.value for m in client.get_metric_history(run.info.run_id, "confident_ratio")]
        assert confident and max(confident) > 0, run.data.tags["trial_number"]


@pytest.mark.slow
def test_a_failing_trial_is_marked_fail_and_the_study_goes_on(data, tmp_path, monkeypatch):
    from pipeline.train import fit as fit_module

    real_fit = fit_module.fit

    def fit(cfg, paths, *args, on_eval=None, **kwargs):
        def boom(epoch, miou):
            if paths.out_dir.name == "trial_0":
                raise RuntimeError("a broken trial")
            on_eval(epoch, miou)

        return real_fit(cfg, paths, *args, on_eval=boom, **kwargs)

    monkeypatch.setattr(fit_module, "fit", fit)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = params.load(None, "smoke", {"sweep.storage": url, "sweep.study": "t",
                                      "sweep.n_trials": 2, "sweep.pruner": "none"})
    paths = sweep_paths(data, tmp_path)
    summary = run_sweep(cfg, paths)
    assert summary["states"]["FAIL"] == 1 and summary["states"]["COMPLETE"] == 1
    st = load(url)
    assert [t.state for t in st.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    _, _, kids = children(tmp_path)
    states = {r.data.tags["trial_number"]: (r.data.tags["trial_state"], r.info.status) for r in kids}
    assert states == {"0": ("FAIL", "FAILED"), "1": ("COMPLETE", "FINISHED")}


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_retried_through_the_heartbeat(data, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = sweep(tmp_path, data, storage=url, trials=3, wait=False,
                 sets={"sweep.heartbeat_interval_s": 1, "sweep.grace_period_s": 3, "sweep.pruner": "none"})
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            running = load(url).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study does not exist yet
            continue
        victim = next((t for t in running if t.intermediate_values and "worker_pid" in t.user_attrs), None)
    assert victim is not None, "no trial reached its first evaluation"
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)  # mid-trial: after epoch 1, before epoch 2
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "was killed by signal 9" in out and "queued for a retry" in out
    st = load(url)
    killed = st.trials[victim.number]
    retry = [t for t in st.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert killed.state == TrialState.FAIL and len(retry) == 1 and retry[0].state in FINISHED
    assert retry[0].params == killed.params and retry[0].user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    assert re.search(r"resumed \S+trial_%d\S* at iteration [1-9]" % victim.number, out)  # from its checkpoint
    assert budget(st, 3)[0] == 0 and sum(t.state in FINISHED for t in st.trials) == 3  # nothing lost
    _, _, kids = children(tmp_path)
    assert {r.info.status for r in kids} <= {"FINISHED", "KILLED"} and len(kids) == 3


# ---- PostgreSQL -----------------------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_postgresql(data, tmp_path, postgres):
    # The URL names the password's environment variable: the config never holds it.
    res = sweep(tmp_path, data, storage=pg_url(postgres, "${DDFP_PG_PASSWORD}"), study="pg",
                env={"DDFP_PG_PASSWORD": postgres["password"]})
    assert res.returncode == 0, res.stdout + res.stderr
    check_study(tmp_path, pg_url(postgres, postgres["password"]), study="pg")


@pytest.mark.postgres
@pytest.mark.slow
def test_no_trace_of_the_storage_password(data, tmp_path, postgres):
    secret = postgres["password"]
    res = sweep(tmp_path, data, trials=2, study="secret", env={"OPTUNA_STORAGE": pg_url(postgres, secret)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{postgres['user']}:***@" in res.stderr  # the storage is shown, redacted
    assert secret not in res.stdout + res.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # MLflow store + artifacts, reports, runs
    assert any(p.name == "mlflow.db" for p in files) and any(p.name == "best_params.yaml" for p in files)
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    _, parent, _ = children(tmp_path, "secret")
    assert parent[0].data.params["storage"].startswith(f"postgresql+psycopg2://{postgres['user']}:***@")
    # A literal password in sweep.storage is refused for SLURM (it would be pickled into the job).
    from pipeline.sweep.launch import _slurm_workers

    cfg = params.load(None, "smoke", {"sweep.storage": pg_url(postgres, secret), "run.launcher": "slurm"})
    with pytest.raises(config.ConfigError, match="sweep.storage"):
        _slurm_workers(cfg, None, None)


# ---- SLURM ----------------------------------------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.slow
def test_job_array_of_two_workers(cluster, data, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = params.load(None, "smoke", {
        "run.launcher": "slurm", "sweep.storage": url, "sweep.study": "t",
        "sweep.n_trials": 4, "sweep.workers": 2, "slurm.folder": str(tmp_path / "slurm" / "%j"),
        "slurm.setup": [f"source {ROOT}/slurm/env.sh"], "slurm.time_min": 10})
    paths = sweep_paths(data, tmp_path)
    t0 = time.time()
    run_sweep(cfg, paths)
    print(f"SLURM array of 2 workers, 4 trials: {time.time() - t0:.1f} s")
    st = check_study(tmp_path, url)
    assert len({t.user_attrs["worker_pid"] for t in st.trials}) == 2


def test_trial_config_and_storage_kinds(tmp_path, monkeypatch):
    cfg = params.load(None, "smoke")
    tcfg = trial_config(cfg, {"perturb.eps": 2.5, "train.conf_thresh": 0.7})
    assert (tcfg.perturb.eps, tcfg.train.conf_thresh, tcfg.train.epochs, tcfg.data.crop_size) == (2.5, 0.7, 2, 32)
    with pytest.raises(config.ConfigError, match="train.conf_thresh"):
        trial_config(cfg, {"train.conf_thresh": 1.5})
    with pytest.raises(config.ConfigError, match="sweep"):
        params.replace(cfg, {"sweep.params": {"perturb.epz": {"low": 1.0, "high": 2.0}}})
    monkeypatch.chdir(tmp_path)
    journal = open_storage(params.replace(cfg, {"sweep.storage": "journal:sweep.log"}))
    assert isinstance(journal, optuna.storages.JournalStorage) and (tmp_path / "sweep.log").exists()
    with pytest.raises(config.ConfigError, match="NOT_SET_VAR"):
        open_storage(params.replace(cfg, {"sweep.storage": "postgresql://u:${NOT_SET_VAR}@h/db"}))


def test_a_slurm_sweep_pickles_the_storage_reference_never_the_password(monkeypatch):
    # The documented form, a password read from the environment: the job gets the ${VAR} reference
    # (SLURM passes the submitter's environment on) and the folder never holds the password.
    from pipeline.sweep.launch import job_tree

    monkeypatch.setenv("DDFP_PG_PASSWORD", "p@ss/w:rd")
    ref = "postgresql+psycopg2://optuna:${DDFP_PG_PASSWORD}@127.0.0.1/optuna"
    cfg = params.load(None, "smoke", {"sweep.storage": ref, "run.launcher": "slurm"})
    tree = job_tree(cfg)
    assert tree["sweep"]["storage"] == ref
    assert "p@ss/w:rd" not in repr(tree)
    literal = params.replace(cfg, {"sweep.storage": "postgresql+psycopg2://optuna:pw@127.0.0.1/optuna"})
    with pytest.raises(config.ConfigError, match="sweep.storage"):
        job_tree(literal)


def test_a_retry_knows_the_trial_it_retries():
    # A heartbeat-stale trial's retry trains in the first trial's run directory (it resumes there).
    study = optuna.create_study()
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params={"x": 0.5}, distributions={"x": dist},
                                        system_attrs={"failed_trial": 3, "retry_history": [3]}))
    seen = []
    study.optimize(lambda t: seen.append(retried_trial(t)) or 0.0, n_trials=2)
    assert seen == [3, None]
