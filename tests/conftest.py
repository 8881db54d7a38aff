import os
import signal
from pathlib import Path

import pytest

from pipeline import params
from pipeline.stages.splits import run_splits
from pipeline.stages.synthetic import write_synthetic
from pipeline.stages.weights import run_weights
from tests.helpers import slurm
from tests.helpers.http_server import FileServer
from tests.helpers.project import smoke_project
from tests.helpers.services import SERVICE_REASONS, require_service

# A suite started in the background of a non-interactive shell (`nohup make test &`) inherits SIGINT
# ignored, and an ignored signal stays ignored across exec: every process the Ctrl-C tests start
# would then shrug off their SIGINT. A handler of this process's own is reset to the default at exec,
# so the children get the terminal's usual Ctrl-C whatever shell started the suite.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The service tests skipped on this machine, by node id, with the reason (one of SERVICE_REASONS).
SKIPPED_SERVICES: dict[str, str] = {}


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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The real smoke profile's inputs on disk, written once for the session and only read by tests:
    dataset/ (the generated images), splits/<split>/ (its split lists) and weights/<backbone>.pth."""
    root = tmp_path_factory.mktemp("smoke_data")
    cfg = params.load(profile="smoke")
    write_synthetic(cfg, root / "dataset")
    run_splits(cfg, root / "dataset", root / "splits")
    run_weights(cfg, root / "weights")
    return root


@pytest.fixture
def server(tmp_path: Path):
    srv = FileServer(tmp_path / "served")
    srv.root.mkdir()
    yield srv.start()
    srv.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh clone-like copy of the project, switched to the smoke profile (32 px crops)."""
    dest = tmp_path_factory.mktemp("project")
    env = smoke_project(dest, lambda params: params["data"].update(crop_size=32))
    return dest, env


@pytest.fixture(scope="session")
def cluster():
    """The one-node SLURM cluster (slurm/start_cluster.sh), started once for the session."""
    require_service(slurm.missing_cluster())
    ours = slurm.start("start_cluster.sh")
    yield
    if ours:  # stop only what this session started
        slurm.stop("stop_cluster.sh")


@pytest.fixture(scope="session")
def two_nodes() -> Path:
    """A second, separate SLURM cluster of two nodes on this machine (slurm/start_two_nodes.sh),
    started once for the session; its config file. Only a test that sets SLURM_CONF to it talks to
    it: every other SLURM test keeps using the one-node cluster."""
    require_service(slurm.missing_cluster(slurm.TWO_NODE_DAEMONS))
    ours = slurm.start("start_two_nodes.sh")
    yield slurm.TWO_NODES_CONF
    if ours:
        slurm.stop("stop_two_nodes.sh")
