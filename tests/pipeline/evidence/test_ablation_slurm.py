"""`ddfp ablation` on the real one-node cluster: 2 methods x 2 splits x 2 seeds as one job array capped
at 2 running tasks, the same outputs as the local run of the same plan, and a rerun that trains nothing."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.project import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
DDFP = str(Path(sys.executable).parent / "ddfp")


def ablation(tiny_data, work: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [DDFP, "ablation", "--profile", "smoke", "--data", str(tiny_data / "dataset"),
           "--splits-dir", str(tiny_data / "splits"), "--work", str(work), "--out", str(out),
           "--seeds", "0,1", "--curve-seeds", "0,1", "--arms", "supervised,ddfp"]
    for key, value in {"model.pretrained": "false", "data.crop_size": "32", "tracking.enabled": "false",
                       "train.max_iters": "6", "run.log_every": "2"}.items():
        cmd += ["--set", f"{key}={value}"]
    done = subprocess.run(cmd + list(extra), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def keys(tree, prefix=""):
    """Every key path of a JSON tree (the report's shape, not its numbers)."""
    if isinstance(tree, dict):
        return {p for k, v in tree.items() for p in {f"{prefix}/{k}"} | keys(v, f"{prefix}/{k}")}
    return set()


def test_ablation_on_slurm_caps_the_array_and_writes_what_a_local_run_writes(cluster, tiny_data, tmp_path):
    running: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True)
            running.append(len(out.stdout.split()))
            time.sleep(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.time()
    try:
        slurm = ablation(tiny_data, tmp_path / "work_slurm", tmp_path / "slurm", "--set", "run.launcher=slurm",
                         "--set", "slurm.array_parallelism=2", "--set", f"slurm.folder={tmp_path / 'jobs' / '%j'}",
                         "--set", "slurm.time_min=10")
    finally:
        stop.set()
        watcher.join()
    print(f"ablation of 8 cells on SLURM: {time.time() - t0:.1f} s; most tasks running at once: {max(running)}")
    assert slurm.stderr.count("submitted SLURM job") == 8
    assert max(running) == 2  # the cap, reached (2 CPUs would allow no more anyway: the cap is also in the script)
    assert "#SBATCH --array=0-7%2" in next((tmp_path / "jobs").rglob("*_submission.sh")).read_text()
    t0 = time.time()
    ablation(tiny_data, tmp_path / "work_local", tmp_path / "local")
    print(f"the same plan locally: {time.time() - t0:.1f} s")
    on_slurm, local = (json.loads((tmp_path / d / "ablation.json").read_text()) for d in ("slurm", "local"))
    assert keys(on_slurm) == keys(local) and keys(on_slurm)
    records = sorted(p.relative_to(tmp_path / "slurm") for p in (tmp_path / "slurm" / "ablation_runs").rglob("*.json"))
    assert len(records) == 8
    assert records == sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("seed*.json"))
    again = ablation(tiny_data, tmp_path / "work_slurm", tmp_path / "slurm", "--set", "run.launcher=slurm",
                     "--set", f"slurm.folder={tmp_path / 'jobs' / '%j'}")
    assert "submitted SLURM job" not in again.stderr  # every record is there: nothing to train
