import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from http_server import FileServer

from pipeline import params
from ddfp.data.spec import get_spec
from ddfp.flow import DensityEstimator
from ddfp.model import build_model
from ddfp.step import Batch, Models
from ddfp.teacher import make_teacher


# Why service tests were skipped on this machine; every test skipped for one of these reasons
# (also those skipped through an already-failed session fixture) is named again at the very end.
SERVICE_REASONS: set[str] = set()
SKIPPED_SERVICES: dict[str, str] = {}


def require_service(missing: str | None) -> None:
    """Skip a service test whose system packages are absent, on a developer's machine only. In CI
    (`.ci/run` sets CI=1; `make test` installs the packages as root) a missing package is a failure."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {missing}")
    SERVICE_REASONS.add(missing)  # so the end-of-run summary names every test skipped for it
    pytest.skip(missing)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].removeprefix("Skipped: ") in SERVICE_REASONS:
        SKIPPED_SERVICES[report.nodeid] = report.longrepr[2].removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter) -> None:
    """End a run that could not test everything by saying so, with the one command that does."""
    if not SKIPPED_SERVICES:
        return
    terminalreporter.section("service tests NOT run on this machine", sep="!", red=True)
    for test, missing in SKIPPED_SERVICES.items():
        terminalreporter.write_line(f"{test}: {missing}")
    terminalreporter.write_line("run everything (installs the Debian packages, needs root): sudo make test")


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """Every test run tracks into one throw-away sqlite store, never the project's mlflow.db
    (tests that need their own store or a server set MLFLOW_TRACKING_URI themselves)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY")}
    os.environ.update(MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true")
    yield uri
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def smoke_cfg():
    """The real smoke profile, unpretrained (no weights file needed for unit tests)."""
    return params.replace(params.load(profile="smoke"), {"model.pretrained": False, "data.crop_size": 32})


def make_models(cfg) -> Models:
    torch.manual_seed(0)
    n = get_spec(cfg.data.dataset).num_classes
    student = build_model(cfg.model, n)
    return Models(student, make_teacher(student), DensityEstimator(cfg.flow, cfg.model.head_channels, n))


def make_batch(cfg, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    b, s = cfg.train.batch_size, cfg.data.crop_size
    n = get_spec(cfg.data.dataset).num_classes
    ignore = torch.zeros(b, s, s, dtype=torch.long)
    ignore[:, -4:] = 255
    return Batch(torch.randn(b, 3, s, s, generator=gen), torch.randint(0, n, (b, s, s), generator=gen),
                 torch.randn(b, 3, s, s, generator=gen), torch.randn(b, 3, s, s, generator=gen), ignore)


@pytest.fixture
def server(tmp_path: Path):
    srv = FileServer(tmp_path / "served")
    srv.root.mkdir()
    yield srv.start()
    srv.stop()


ROOT = Path(__file__).resolve().parent.parent


def smoke_project(dest: Path, edit: Callable[[dict], None], env: dict[str, str] | None = None) -> dict[str, str]:
    """A fresh-clone-like copy of this working tree in `dest` (tracked and untracked, not ignored, files),
    switched to the smoke profile, its values changed by `edit`, committed to a new git repo; returns
    the environment its commands run in. PYTHONPATH: the stages run the copy's code, not the
    checkout's that the venv's editable install points at."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(dest), **(env or {})}
    subprocess.run(["ddfp", "profile", "smoke"], cwd=dest, env=env, capture_output=True, check=True)
    values = yaml.safe_load((dest / "params.yaml").read_text())
    edit(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, env=env, capture_output=True, check=True)
    return env
