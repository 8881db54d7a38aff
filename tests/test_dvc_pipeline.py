"""`dvc repro` of the smoke profile in a real git repo: stages, caching, params, kill and resume."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(cmd, cwd, env, check=True, **kw):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and res.returncode:
        raise AssertionError(f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh clone-like copy of the project, switched to the smoke profile (32 px crops)."""
    dest = tmp_path_factory.mktemp("project")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    run(["ddfp", "profile", "smoke"], dest, env)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["crop_size"] = 32
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, dest, env)
    return dest, env


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_repro_runs_all_then_nothing_then_only_what_eps_touches(project):
    dest, env = project
    first = run(["dvc", "repro"], dest, env).stdout
    assert ran_stages(first) == {"download", "splits", "weights", "train@8", "train@16", "evaluate@8",
                                 "evaluate@16", "report"}
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], dest, env).stdout)
    shown = json.dumps(metrics)
    assert "metrics/8.json" in shown and "metrics/16.json" in shown and "val_miou" in shown
    report = (dest / "reports" / "results.md").read_text()
    assert re.search(r"^\|\s*8\s*\|", report, re.M) and re.search(r"^\|\s*16\s*\|", report, re.M)
    second = run(["dvc", "repro"], dest, env).stdout
    assert ran_stages(second) == set()
    params = (dest / "params.yaml").read_text()
    (dest / "params.yaml").write_text(params.replace("eps: 4.0", "eps: 2.0"))
    status = json.loads(run(["dvc", "status", "--json"], dest, env).stdout)
    changed = {name for name in status if not name.endswith(".dvc")}
    assert {"train@8", "train@16"} <= changed
    assert not changed & {"download", "splits", "weights"}
    (dest / "params.yaml").write_text(params)


def test_killed_training_resumes_from_its_checkpoint(project):
    dest, env = project
    run(["dvc", "repro"], dest, env)  # everything current (a no-op after the test above)
    reference = json.loads((dest / "metrics" / "8.json").read_text())
    ckpt = dest / "runs" / "8" / "last.pt"
    ckpt.unlink()
    proc = subprocess.Popen(["dvc", "repro", "train@8"], cwd=dest, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists() and proc.poll() is None, "training ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = run(["dvc", "repro"], dest, env)
    assert "resumed" in out.stdout + out.stderr
    assert "train@16" not in ran_stages(out.stdout)
    resumed = json.loads((dest / "metrics" / "8.json").read_text())
    assert resumed["val_miou"] == reference["val_miou"] and resumed["iterations"] == reference["iterations"]
