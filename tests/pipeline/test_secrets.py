"""Credentials come from the environment and are shown nowhere: the one URL redactor, `${VAR}`
expansion at the moment of use, ~/.netrc for the mirror, and a scan of every file and output a real
`dvc repro` of the smoke profile leaves behind."""

from __future__ import annotations

import base64
import hashlib
import pickle
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from ddfp.config import ConfigError
from pipeline import cli, params, sections
from pipeline.fetch import DownloadError
from pipeline.secrets import expand_env, redact, redact_tree
from pipeline.slurm import job_config, submit_training, wait
from pipeline.stages.download import fetch_file
from pipeline.stages.synthetic import write_synthetic
from pipeline.stages.weights import run_weights
from tests.helpers.http_server import FileServer
from tests.helpers.project import smoke_project
from tests.helpers.slurm import run_paths, smoke

# Every character that ends or splits a URL's userinfo for some parser: the redactor must hide it all.
RAW = "p@ss/w:rd"
ENCODED = "p%40ss%2Fw%3Ard"  # the same password as it stands in a URL (and in the environment)


# ---- the redactor ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://bob:pa55@10.0.0.1:5432/optuna", "postgresql+psycopg2://bob:***@10.0.0.1:5432/optuna"),
    ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),  # "/" in the password
    ("https://u:p@ss@h/x", "https://u:***@h/x"),  # "@": the last one ends the userinfo
    ("https://u:p:w@h", "https://u:***@h"),  # ":"
    (f"https://alice:{RAW}@127.0.0.1:8080/base", "https://alice:***@127.0.0.1:8080/base"),
    (f"https://alice:{ENCODED}@mirror.org/base", "https://alice:***@mirror.org/base"),
    ("mysql+pymysql://root:r00t!#@db:3306/x", "mysql+pymysql://root:***@db:3306/x"),
    ("redis://:only-a-password@cache:6379/0", "redis://:***@cache:6379/0"),
    ("http://u:${MIRROR_PW}@h/x", "http://u:***@h/x"),
])
def test_the_password_is_hidden_whatever_it_holds_and_the_user_stays(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize("url, shown", [
    ("https://h/f.tar?token=abc123&v=2", "https://h/f.tar?token=***&v=2"),
    ("https://h/f?access_token=a.b.c", "https://h/f?access_token=***"),
    ("https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sp=r&sig=K%2Fx%3D",
     "https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sp=r&sig=***"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2024%2Fs3"
     "&X-Amz-Security-Token=FwoG&X-Amz-Signature=deadbeef&X-Amz-Expires=600",
     "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Security-Token=***&X-Amz-Signature=***&X-Amz-Expires=600"),
    ("https://api.h/v1?api_key=k1&apikey=k2&key=k3&password=k4&client_secret=k5&auth=k6&code=k7&signature=k8",
     "https://api.h/v1?api_key=***&apikey=***&key=***&password=***&client_secret=***&auth=***&code=***"
     "&signature=***"),
    ("https://id.h/cb#access_token=xyz&state=1", "https://id.h/cb#access_token=***&state=1"),
    ("https://u:pw@h/x?TOKEN=t", "https://u:***@h/x?TOKEN=***"),
])
def test_credential_query_values_are_hidden_and_the_rest_of_the_query_stays(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize("text", [
    "http://host:8080/path",
    "sqlite:///a.db and journal:///shared/optuna.log",
    "https://h/search?page=2&keyword=monkey&sort=date",
    "https://bob@h/x (a user name is no secret)",
    "mail someone@example.org at 10:30",
    "http://127.0.0.1:5000/#/experiments/1/runs",
    "",
])
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_every_url_in_a_text_is_redacted_where_it_stands() -> None:
    text = (f"(psycopg2.OperationalError) 'postgresql://u:{RAW}@h/db' failed; retry "
            f"\"https://a:b@c/d?sig=s\" and https://e:{ENCODED}@f/g.")
    assert redact(text) == ("(psycopg2.OperationalError) 'postgresql://u:***@h/db' failed; retry "
                            "\"https://a:***@c/d?sig=***\" and https://e:***@f/g.")


def test_nested_configs_are_redacted_throughout() -> None:
    tree = {"a": {"uri": f"https://u:{RAW}@h"}, "b": [f"mysql://r:{RAW}@h/x", 3], "c": None}
    assert redact_tree(tree) == {"a": {"uri": "https://u:***@h"}, "b": ["mysql://r:***@h/x", 3], "c": None}


def test_the_job_config_pickled_for_slurm_holds_no_password() -> None:
    cfg = params.load(None, "smoke", {"sweep.storage": f"postgresql+psycopg2://u:{RAW}@h/db",
                                      "download.mirror": f"https://alice:{RAW}@mirror.org/x"})
    data = pickle.dumps(job_config(cfg))
    assert RAW.encode() not in data and b"w:rd" not in data


# ---- ${VAR} from the environment ---------------------------------------------------------------

def test_expand_env_reads_braced_variables_only_and_names_the_missing_ones(monkeypatch) -> None:
    monkeypatch.setenv("DDFP_TEST_PW", ENCODED)
    monkeypatch.delenv("DDFP_TEST_UNSET", raising=False)
    assert expand_env("https://alice:${DDFP_TEST_PW}@h/$HOME", "download.mirror") == f"https://alice:{ENCODED}@h/$HOME"
    with pytest.raises(ConfigError, match=r"download.mirror: environment variable\(s\) DDFP_TEST_UNSET not set"):
        expand_env("https://alice:${DDFP_TEST_UNSET}@h", "download.mirror")


def test_sweep_storage_expands_the_environment_when_opened(monkeypatch, tmp_path: Path) -> None:
    from pipeline.sweep.study import open_storage

    monkeypatch.setenv("DDFP_TEST_DB_DIR", str(tmp_path))
    monkeypatch.delenv("DDFP_TEST_UNSET", raising=False)
    cfg = params.load(None, "smoke", {"sweep.storage": "sqlite:///${DDFP_TEST_DB_DIR}/optuna.db",
                                      "sweep.heartbeat_interval_s": None})
    open_storage(cfg)
    assert (tmp_path / "optuna.db").is_file()
    assert cfg.sweep.storage == "sqlite:///${DDFP_TEST_DB_DIR}/optuna.db"  # the config keeps the reference
    with pytest.raises(ConfigError, match="sweep.storage: .*DDFP_TEST_UNSET"):
        open_storage(params.replace(cfg, {"sweep.storage": "postgresql://u:${DDFP_TEST_UNSET}@h/db"}))


# ---- the mirror: credentials from the environment or ~/.netrc, never from params.yaml ----------

def served_file(server: FileServer) -> sections.FileSource:
    data = b"mirrored bytes"
    (server.root / "base").mkdir()
    (server.root / "base" / "f.bin").write_bytes(data)
    return sections.FileSource(url="https://origin.invalid/f.bin", dest="f.bin", sha256=hashlib.sha256(data).hexdigest())


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_mirror_password_comes_from_the_environment(server: FileServer, tmp_path: Path, monkeypatch) -> None:
    src = served_file(server)
    monkeypatch.setenv("DDFP_TEST_MIRROR_PW", ENCODED)
    mirror = server.base.replace("http://", "http://alice:${DDFP_TEST_MIRROR_PW}@") + "/base"
    dl = params.load(None, "smoke", {"download.mirror": mirror, "download.retries": 0}).download
    fetch_file(src, dl, tmp_path)
    assert (tmp_path / "f.bin").read_bytes() == b"mirrored bytes"
    assert server.requests[-1].headers["Authorization"] == basic("alice", RAW)
    assert dl.mirror == mirror  # expanded for the request only


def test_the_mirror_credentials_come_from_netrc(server: FileServer, tmp_path: Path, monkeypatch) -> None:
    src = served_file(server)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login alice password {RAW}\n")
    monkeypatch.setenv("NETRC", str(netrc))  # requests reads $NETRC, else ~/.netrc
    dl = params.load(None, "smoke", {"download.mirror": f"{server.base}/base", "download.retries": 0}).download
    fetch_file(src, dl, tmp_path / "data")
    assert server.requests[-1].headers["Authorization"] == basic("alice", RAW)


def test_a_failed_mirror_request_names_the_url_without_the_password(
    server: FileServer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("DDFP_TEST_MIRROR_PW", ENCODED)
    mirror = server.base.replace("http://", "http://alice:${DDFP_TEST_MIRROR_PW}@") + "/missing"
    dl = params.load(None, "smoke", {"download.mirror": mirror, "download.retries": 0}).download
    with pytest.raises(DownloadError, match=r"HTTP 404 for http://alice:\*\*\*@127\.0\.0\.1") as err:
        fetch_file(sections.FileSource(url="https://origin.invalid/f.bin", dest="f.bin"), dl, tmp_path)
    assert ENCODED not in str(err.value) and RAW not in str(err.value)


@pytest.mark.parametrize("mirror", [f"https://alice:{ENCODED}@mirror.org/x", "https://alice:hunter2@mirror.org/x",
                                    "https://mirror.org/x?token=abc"])
def test_a_literal_password_in_the_mirror_is_refused_before_anything_runs(tmp_path: Path, mirror: str) -> None:
    # DVC copies download.mirror into dvc.lock (committed): a literal password there is a leak.
    cfg = params.load(None, "smoke", {"download.mirror": mirror, "model.pretrained": False})
    refused = r"download.mirror: .*put the password in an environment variable: \$\{VAR\}"
    with pytest.raises(ConfigError, match=refused) as err:
        run_weights(cfg, tmp_path / "weights")
    assert "hunter2" not in str(err.value) and ENCODED not in str(err.value) and "abc" not in str(err.value)
    assert not (tmp_path / "weights" / "NONE").exists()


@pytest.mark.parametrize("override", ["download.mirror", "download.retries"])
def test_the_cli_error_line_shows_no_password(tmp_path: Path, capsys, override: str) -> None:
    # download.retries: the config error quotes the wrong value, here a URL with a password.
    with pytest.raises(SystemExit):
        cli.main(["weights", "--out", str(tmp_path), "--profile", "smoke",
                  "--set", f"{override}=https://alice:{RAW}@mirror.org/x"])
    err = capsys.readouterr().err
    assert err.startswith("ddfp weights: error:") and override in err
    assert "alice:***@mirror.org" in err and RAW not in err and "w:rd" not in err


# ---- the proof: a real `dvc repro` leaves no trace of a secret anywhere ------------------------

MIRROR_ENV = "DDFP_TEST_MIRROR_PW"
LITERAL = "L1t/er@l:pw"  # a password written into params.yaml (sweep.storage): shown redacted everywhere else
FROM_ENV = [RAW, ENCODED, base64.b64encode(f"alice:{RAW}".encode()).decode()]  # as typed, in a URL, in a header
IN_PARAMS = [LITERAL, "er@l:pw"]  # the whole password, and the tail the old regex let through


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def leaks(files: list[Path], needles: list[str]) -> list[str]:
    return [f"{f}: {n}" for f in files for n in needles if n.encode() in f.read_bytes()]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A local HTTP mirror serving the smoke dataset as the one archive the download stage fetches."""
    work = tmp_path_factory.mktemp("mirror")
    write_synthetic(params.load(None, "smoke", {"synthetic.num_val": 8}), work / "dataset")  # 8: a quicker evaluation
    srv = FileServer(work / "served")
    (srv.root / "base").mkdir(parents=True)
    with tarfile.open(srv.root / "base" / "synthetic.tar", "w") as tar:
        for entry in sorted((work / "dataset").iterdir()):
            tar.add(entry, arcname=entry.name)
    yield srv.start()
    srv.stop()


@pytest.fixture
def project(tmp_path: Path, mirror: FileServer):
    """A fresh clone-like copy of the project (one split, 2 iterations) whose dataset comes from the mirror."""
    dest = tmp_path / "project"
    tar = mirror.root / "base" / "synthetic.tar"

    def through_the_mirror(values: dict) -> None:
        values["data"].update(crop_size=32, splits=["8"])
        values["train"]["max_iters"] = 2
        values["download"].update(retries=0, files=[{
            "url": "https://origin.invalid/synthetic.tar", "dest": "synthetic.tar",
            "sha256": hashlib.sha256(tar.read_bytes()).hexdigest(), "extract": True}])

    env = smoke_project(dest, through_the_mirror, {"MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}",
                                                   MIRROR_ENV: ENCODED})
    values = yaml.safe_load((dest / "params.yaml").read_text())
    files = run(["git", "ls-files"], dest, env).stdout.split()
    committed = {rel: hashlib.sha256((dest / rel).read_bytes()).digest() for rel in files if (dest / rel).is_file()}
    return dest, env, values, committed


def written_by_the_run(dest: Path, committed: dict[str, bytes]) -> list[Path]:
    """Every file the pipeline made or changed (the copied sources, this test among them, are not scanned)."""
    files = [p for p in dest.rglob("*") if p.is_file() and ".git" not in p.relative_to(dest).parts]
    return [p for p in files if committed.get(str(p.relative_to(dest))) != hashlib.sha256(p.read_bytes()).digest()]


def set_params(dest: Path, params: dict, mirror: str, storage: str | None = None) -> None:
    params["download"]["mirror"] = mirror
    params["sweep"]["storage"] = storage
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_no_secret_reaches_dvc_lock_stage_output_mlflow_or_reports(project, mirror: FileServer) -> None:
    dest, env, params, committed = project
    host = mirror.base.removeprefix("http://")
    # A literal password in the mirror: the stage refuses to run, so dvc.lock never records it.
    set_params(dest, params, mirror=f"http://alice:{ENCODED}@{host}/base")
    refused = run(["dvc", "repro", "download"], dest, env)
    assert refused.returncode != 0
    assert "put the password in an environment variable: ${VAR}" in refused.stdout + refused.stderr
    assert not leaks(list(dest.glob("dvc.lock")), FROM_ENV)
    assert not [n for n in FROM_ENV if n in refused.stdout + refused.stderr]
    # The password from the environment, a literal one in a key nothing connects to: the whole pipeline.
    storage = f"postgresql+psycopg2://optuna:{LITERAL}@127.0.0.1/optuna"
    set_params(dest, params, mirror=f"http://alice:${{{MIRROR_ENV}}}@{host}/base", storage=storage)
    done = run(["dvc", "repro"], dest, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert mirror.requests[-1].path == "/base/synthetic.tar"
    assert mirror.requests[-1].headers["Authorization"] == basic("alice", RAW)  # it reached the mirror...
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run_params = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id],
                                    "tags.split = '8'")[0].data.params
    assert run_params["download.mirror"] == f"http://alice:***@{host}/base"
    assert run_params["sweep.storage"] == "postgresql+psycopg2://optuna:***@127.0.0.1/optuna"
    # ...and is nowhere else: dvc.lock, params.yaml, outputs, DVC's cache, the MLflow store and artifacts.
    files = written_by_the_run(dest, committed)
    for part in ("dvc.lock", "params.yaml", "mlflow.db", "mlruns", "reports", "metrics", "runs", "data", ".dvc"):
        assert any(part in p.relative_to(dest).parts for p in files), part
    assert not leaks(files, FROM_ENV)
    assert not leaks([p for p in files if p.name != "params.yaml"], IN_PARAMS)
    assert not [n for n in FROM_ENV + IN_PARAMS if n in done.stdout + done.stderr]


@pytest.mark.slurm
@pytest.mark.slow
def test_no_secret_reaches_the_submitit_folder_or_the_job_logs(cluster, tiny_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, ENCODED)  # sbatch hands the environment to the job; nothing writes it down
    cfg = smoke(tmp_path, **{"train.max_iters": 1,
                             "download.mirror": f"http://alice:${{{MIRROR_ENV}}}@mirror.invalid/x",
                             "sweep.storage": f"postgresql+psycopg2://optuna:{LITERAL}@127.0.0.1/optuna"})
    wait(submit_training(cfg, {"8": run_paths(tiny_data, tmp_path / "run")}), ["8"], poll_s=1)
    files = [p for p in (tmp_path / "slurm").rglob("*") if p.is_file()]
    assert any(p.suffix == ".sh" for p in files) and any(p.name.endswith(".pkl") for p in files)
    assert any(p.name.endswith(".out") for p in files) and any(p.name.endswith(".err") for p in files)
    assert not leaks(files + [p for p in (tmp_path / "run").rglob("*") if p.is_file()], FROM_ENV + IN_PARAMS)
