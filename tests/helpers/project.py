"""A fresh-clone-like copy of the project on the smoke profile, and running commands in it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]


def copy_worktree(dest: Path) -> None:
    """This working tree's files (tracked and untracked, not ignored) into dest, like a fresh clone of it."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def smoke_project(dest: Path, edit: Callable[[dict], None], env: dict[str, str] | None = None) -> dict[str, str]:
    """A fresh-clone-like copy of this working tree in `dest` (tracked and untracked, not ignored, files),
    switched to the smoke profile, its params changed by `edit`, committed to a new git repo; returns
    the environment its commands run in. PYTHONPATH: the stages run the copy's code, not the
    checkout's that the venv's editable install points at."""
    copy_worktree(dest)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(dest), **(env or {})}
    subprocess.run(["ddfp", "profile", "smoke"], cwd=dest, env=env, capture_output=True, check=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    edit(params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, env=env, capture_output=True, check=True)
    return env


def run(cmd, cwd, env, check=True, **kw):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and res.returncode:
        raise AssertionError(f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
