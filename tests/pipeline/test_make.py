"""`make test` is the whole test command: it installs what the service tests need when it can, and
otherwise ends by naming every service test it skipped and the command that runs them."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.helpers.project import ROOT
from tests.helpers.services import require_service


def test_the_test_target_installs_the_service_packages_first():
    plan = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert plan.index("tools/install_services.sh") < plan.index("pytest")


def _as_nobody(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        require_service("runs a command as the unprivileged user 'nobody' (needs root to switch)")
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", *(f"{k}={v}" for k, v in env.items()), *cmd],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_without_root_the_installer_says_what_it_cannot_install():
    # A PATH with only the shell and `id`: none of the daemons, no sudo, as on a fresh developer
    # machine (in a folder 'nobody' can read: pytest's own tmp_path is private to root).
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        for tool in ("sh", "id"):
            (bin_dir / tool).symlink_to(shutil.which(tool))
        Path(tmp).chmod(0o755)
        res = _as_nobody([str(bin_dir / "sh"), "tools/install_services.sh"], PATH=str(bin_dir), HOME=tmp)
    assert res.returncode == 0, res.stderr
    assert "slurm-wlm" in res.stderr and "sudo make test" in res.stderr


def test_a_run_that_cannot_start_a_service_names_every_skipped_test(tmp_path):
    # A service fixture that cannot start (as the SLURM / PostgreSQL / browser fixtures do on a machine
    # without their packages): both tests using it are named at the end, with the command to run them.
    (tmp_path / "test_service.py").write_text(
        "import pytest\nfrom tests.helpers.services import require_service\n\n"
        "@pytest.fixture(scope='session')\ndef frob():\n    require_service('needs the frobnicator daemon')\n\n"
        "def test_one(frob):\n    pass\n\ndef test_two(frob):\n    pass\n\ndef test_plain():\n    pass\n")
    env = {**os.environ, "CI": "", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                          f"--rootdir={tmp_path}", str(tmp_path / "test_service.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
    tail = res.stdout[res.stdout.index("service tests NOT run"):]
    assert "test_service.py::test_one: needs the frobnicator daemon" in tail
    assert "test_service.py::test_two" in tail and "test_plain" not in tail
    assert "sudo make test" in tail


def test_the_demo_target_ends_with_the_compact_summary_not_the_wide_metrics_table():
    plan = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert plan.index("ddfp submit --local -j") < plan.index("ddfp summary")  # the demo's stages, then the table
    assert "dvc metrics show" not in plan
