"""Two writers on one run directory: unique temporary names, the run-directory lock, two `dvc repro`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.errors import BusyError
from pipeline.train import checkpoint, runlock
from tests.helpers.project import ROOT, smoke_project

DDFP = [sys.executable, "-m", "pipeline.cli"]
SMOKE = ["--profile", "smoke", "--set", "model.pretrained=false", "--set", "data.crop_size=32",
         "--set", "tracking.enabled=false"]

SAVER = """
import sys, time, torch
from pathlib import Path
from pipeline.train import checkpoint
path, go, me = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
state = {"writer": me, "w": torch.full((1_000_000,), float(me))}
Path(f"{go}.{me}").touch()
while not go.exists():
    time.sleep(0.01)
for i in range(30):
    state["i"] = i
    checkpoint.save_atomic(state, path)
"""


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """Its output once it ends; killed (not left running beside later tests) if it does not."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(predicate, what: str, timeout: float = 60, proc=None):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_two_processes_saving_one_checkpoint_neither_crash_nor_tear(tmp_path):
    ckpt, go = tmp_path / "run" / "last.pt", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(ckpt), str(go), str(n)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for n in (1, 2)]
    wait_for(lambda: all(Path(f"{go}.{n}").exists() for n in (1, 2)), "both savers to start")
    go.touch()
    errors = [finish(p)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(errors)
    for name in ("last.pt", "last.prev.pt"):
        state = torch.load(ckpt.parent / name, weights_only=True)
        assert torch.equal(state["w"], torch.full((1_000_000,), float(state["writer"])))
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.prev.pt", "last.pt"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "45")
    run = tmp_path / "runs" / "16"
    with runlock.hold(run):
        with pytest.raises(BusyError) as err:
            with runlock.hold(run):
                pass
    msg = str(err.value)
    assert msg.startswith(f"{run} is being written by pid {os.getpid()} on host {socket.gethostname()} (SLURM job 45)")
    assert msg.endswith("wait for it or stop it")
    with runlock.hold(run):  # released on exit
        pass


def test_a_killed_holder_frees_the_run_directory(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from pipeline.train import runlock\n"
                               "with runlock.hold(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(run)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(BusyError, match=f"pid {holder.pid} "):
        with runlock.hold(run):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with runlock.hold(run):
        pass


def holder_pid(run: Path) -> int | None:
    try:
        return json.loads((run / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_second_trainer_on_one_run_directory_exits_busy_at_once(tiny_data, tmp_path):
    run = tmp_path / "run"
    data = ["--data", str(tiny_data / "dataset"), "--split-dir", str(tiny_data / "splits" / "8"), "--out", str(run)]
    first = subprocess.Popen(DDFP + ["train", *SMOKE, *data], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(lambda: holder_pid(run) == first.pid, "the first trainer to hold the run directory", proc=first)
        second = subprocess.run(DDFP + ["train", *SMOKE, *data], capture_output=True, text=True, timeout=60)
    finally:
        err = finish(first)[1]
    assert second.returncode == 5, second.stderr
    assert f"{run} is being written by pid {first.pid} on host" in second.stderr
    assert "Traceback" not in second.stderr and "resumed" not in second.stdout
    assert first.returncode == 0, err[-3000:]
    state = checkpoint.load(run / "last.pt")
    assert state["done"] and state["iteration"] == 30


@pytest.mark.slow
def test_two_trainings_that_start_together_on_a_fresh_store_both_finish_tracked(tiny_data, tmp_path):
    # What a fresh clone's job array, `dvc queue start -j 2` or two ablation workers do: two processes
    # create (and migrate) the same new MLflow store at once. Interleaved migrations of one sqlite
    # file crash one process or leave the store half-migrated; neither training may be lost.
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    tracked = SMOKE[:-2] + ["--set", "train.max_iters=2"]  # tracking on
    procs = [subprocess.Popen(DDFP + ["train", *tracked, "--set", f"train.seed={seed}", "--data",
                                      str(tiny_data / "dataset"), "--split-dir", str(tiny_data / "splits" / "8"),
                                      "--out", str(tmp_path / f"run{seed}")],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for seed in (0, 1)]
    outputs = [finish(p) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id], "tags.ddfp_kind = 'train'")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and "loss" in r.data.metrics for r in runs)


# ---- DVC beside DVC, and a hand-run `ddfp train` beside DVC -----------------------------------
def run_cmd(cmd, cwd, env, check=True):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and res.returncode:
        raise AssertionError(f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _shrink(values: dict) -> None:
    values["data"]["crop_size"] = 32
    values["tracking"]["enabled"] = False
    values["train"]["max_iters"] = 12


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC copy of the project on the smoke profile (32 px crops, 12 iterations), its data
    stages done."""
    dest = tmp_path_factory.mktemp("project")
    env = smoke_project(dest, _shrink)
    run_cmd(["dvc", "repro", "splits", "weights"], dest, env)
    return dest, env


def stage_is_current(dest: Path, env: dict, stage: str) -> bool:
    status = json.loads(run_cmd(["dvc", "status", "--json", stage], dest, env).stdout)
    return status == {}


@pytest.mark.slow
def test_two_dvc_repro_of_one_stage_end_with_a_valid_checkpoint(project):
    dest, env = project
    procs = [subprocess.Popen(["dvc", "repro", "train@8-ddfp"], cwd=dest, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [finish(p)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, "\n".join(outputs)
    for code, out in zip(codes, outputs):
        # The loser is refused by DVC's locks (the stage's rwlock, the repository lock) or by ours.
        assert code == 0 or any(m in out for m in ("is busy", "Unable to acquire lock", "is being written by")), out
    assert checkpoint.load(dest / "runs" / "8" / "ddfp" / "last.pt")["done"]
    assert stage_is_current(dest, env, "train@8-ddfp")


@pytest.mark.slow
def test_dvc_repro_beside_a_hand_run_train_is_refused(project):
    """`ddfp train` (by hand, or a job of `ddfp submit --no-wait`) holds runs/16/ddfp: DVC's training stops."""
    dest, env = project
    run = dest / "runs" / "16" / "ddfp"
    hand = subprocess.Popen(["ddfp", "train", "--set", "train.max_iters=null", "--data", "data/dataset",
                             "--split-dir", "data/splits/16", "--weights", "data/weights/mobilenet_v2.pth",
                             "--out", "runs/16/ddfp"], cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: holder_pid(run) == hand.pid, "the hand-run training to hold runs/16/ddfp", proc=hand)
        repro = run_cmd(["dvc", "repro", "train@16-ddfp"], dest, env, check=False)
    finally:
        err = finish(hand)[1]
    assert repro.returncode != 0
    assert f"runs/16/ddfp is being written by pid {hand.pid} on host" in repro.stdout + repro.stderr
    assert hand.returncode == 0, err[-3000:]
    assert checkpoint.load(run / "last.pt")["done"]
