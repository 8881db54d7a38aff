"""A service test that cannot run is never a silent skip: locally it is named again at the end of the
run with the command that runs it, and in CI (CI=1) it fails."""

import os
import subprocess
import sys

from tests.helpers.project import ROOT

NEEDS_A_SERVICE = '''
from tests.helpers.services import require_service


def test_needs_a_service():
    require_service("demo-service: not installed (apt-get install demo-service)")
'''


def run_pytest(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_needs_a_service.py").write_text(NEEDS_A_SERVICE)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "1"} if ci else {})
    # The project's conftest as a plugin: its hooks write the end-of-run section.
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_needs_a_service.py")],
                          cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)


def test_a_missing_service_is_named_at_the_end_of_a_local_run(tmp_path):
    res = run_pytest(tmp_path, ci=False)
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout + res.stderr
    tail = res.stdout[res.stdout.index("service tests NOT run on this machine"):]
    assert "test_needs_a_service.py::test_needs_a_service: demo-service: not installed" in tail
    assert "sudo make test" in tail


def test_a_missing_service_fails_in_ci(tmp_path):
    res = run_pytest(tmp_path, ci=True)
    assert res.returncode == 1 and "CI must provide this: demo-service: not installed" in res.stdout, res.stdout
