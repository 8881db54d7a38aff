"""The tracking tests' real `mlflow server` (one per test module) and the store a test points at."""

import pytest

from tests.helpers.mlflow_server import MlflowServer


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    yield srv
    srv.stop()


@pytest.fixture
def tracking_to(monkeypatch):
    def point(uri: str) -> str:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        return uri

    return point
