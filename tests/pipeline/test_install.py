"""A non-editable `pip install .` works away from the checkout: the profiles ship in the package and a
smoke `dvc repro` runs the installed code in a copy of the repository."""

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.project import copy_worktree, ran_stages, run


def fresh_venv(path):
    """A new venv that installs nothing from the network: it sees this venv's packages (torch, DVC, ...)
    through a .pth line, which adds the folder but runs none of its .pth files (no editable ddfp); this
    venv's pip installs into it (`pip --python`), building with this venv's setuptools."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True)
    lib = next((path / "lib").glob("python3*/site-packages"))
    (lib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return path / "bin"


@pytest.mark.slow
def test_an_installed_ddfp_runs_the_smoke_pipeline_from_a_copy(tmp_path):
    src, work = tmp_path / "src", tmp_path / "work"
    copy_worktree(src)
    bin_dir = fresh_venv(tmp_path / "venv")
    run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q", "--no-deps",
         "--no-build-isolation", str(src)],
        tmp_path, dict(os.environ))
    copy_worktree(work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The new venv's `ddfp` first; DVC itself from this venv, after it.
    env.update(PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    where = run([str(bin_dir / "python"), "-I", "-c", "import pipeline.params as p; print(p.PROFILES_DIR)"], work, env)
    assert where.stdout.strip().startswith(str(tmp_path / "venv"))  # the installed copy, with its profiles
    run(["rm", "-r", "pipeline/profiles"], work, env)  # the copy's profiles cannot be what is read
    run(["ddfp", "profile", "smoke"], work, env)
    values = yaml.safe_load((work / "params.yaml").read_text())
    values["data"].update(crop_size=32, splits=["8"])
    values["train"]["max_iters"] = 2
    values["tracking"]["enabled"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t",
                                                              "commit", "-qm", "init"]):
        run(cmd, work, env)
    out = run(["dvc", "repro"], work, env)
    assert {"train@8-supervised", "train@8-ddfp", "evaluate@8-ddfp", "report"} <= ran_stages(out.stdout)
    assert (work / "metrics" / "8" / "ddfp.json").is_file() and (work / "reports" / "results.md").is_file()
