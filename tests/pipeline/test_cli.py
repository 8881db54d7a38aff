"""The `ddfp` console script: documented exit codes per kind of failure, one clean line, --version, help.

The script runs as users run it (`.venv/bin/ddfp` in a subprocess), so the exit status is the real one.
"""

from __future__ import annotations

import errno
import importlib.metadata
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.errors import EXIT_CODES, DataError, JobError, failure
from pipeline.fetch import ChecksumError, DownloadError
from pipeline.slurm import SlurmJobError
from pipeline.sweep.study import SweepError
from pipeline.train.fit import Interrupted

DDFP = str(Path(sys.executable).parent / "ddfp")


def ddfp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([DDFP, *args], capture_output=True, text=True, timeout=timeout)


def test_version_is_the_installed_distribution() -> None:
    run = ddfp("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"ddfp {importlib.metadata.version('ddfp')}"


def test_help_documents_every_exit_code() -> None:
    run = ddfp("--help")
    assert run.returncode == 0
    for code, meaning in {0: "success", **EXIT_CODES}.items():
        assert re.search(rf"^\s+{code}\s+{re.escape(meaning)}$", run.stdout, re.M), run.stdout


def test_every_option_has_a_help_text() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the one subparsers action
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in commands.items()
               for a in sub._actions if not a.help]
    assert not missing


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf"])
def test_a_non_finite_setting_exits_2_before_anything_runs(tmp_path: Path, value: str) -> None:
    out = tmp_path / "splits"
    run = ddfp("splits", "--profile", "smoke", "--set", f"perturb.eps={value}", "--data", str(tmp_path / "none"),
               "--out", str(out))
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("ddfp splits: error: invalid configuration") and "perturb.eps" in run.stderr
    assert not out.exists()


def test_argparse_usage_error_exits_2() -> None:
    assert ddfp("train", "--profile", "smoke").returncode == 2


def test_a_missing_data_dir_exits_3_with_one_line(tmp_path: Path) -> None:
    run = ddfp("splits", "--profile", "smoke", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "s"))
    assert run.returncode == 3, run.stderr
    assert run.stderr.startswith("ddfp splits: error: ") and str(tmp_path / "none") in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    """SIGINT while the download waits on a server that accepted the connection and says nothing."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.bin"
        proc = subprocess.Popen([DDFP, "download", "--profile", "smoke", "--set", f"download.files=[{{url: '{url}', "
                                 "dest: x.bin}]", "--out", str(tmp_path / "d")], stderr=subprocess.PIPE, text=True)
        silent.settimeout(60)
        conn, _ = silent.accept()  # the request is under way: the handler is installed
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        conn.close()
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "ddfp download: interrupted; state saved, rerun to resume"


@pytest.mark.parametrize(
    "err, code, line",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/runs/last.pt"), 3,
         "no space left on the device: /data/runs/last.pt"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x"), 3, "/data/x"),
        (ChecksumError("x.tar: sha256 mismatch"), 3, "x.tar: sha256 mismatch"),
        (SlurmJobError("job 12 failed"), 4, "job 12 failed"),
        (SweepError("3 of 20 trials"), 4, "3 of 20 trials"),
        (Interrupted("stopped at iteration 7 on request"), 130, "interrupted; state saved, rerun to resume"),
        (KeyboardInterrupt(), 130, "interrupted; state saved, rerun to resume"),
    ],
)
def test_failures_map_to_their_documented_code(err: BaseException, code: int, line: str) -> None:
    message, exit_code = failure(err)
    assert exit_code == code and line in message


def test_error_classes_join_the_documented_kinds() -> None:
    assert issubclass(DownloadError, DataError) and issubclass(SlurmJobError, JobError)
    assert issubclass(SweepError, JobError)


def test_bugs_keep_their_traceback() -> None:
    assert failure(TypeError("a bug")) is None and failure(OSError(errno.EIO, "I/O error")) is None


def test_a_decode_error_in_a_loader_worker_is_one_line_exit_3(tmp_path: Path) -> None:
    from PIL import Image
    from torch.utils.data import DataLoader

    from ddfp.data.dataset import SegDataset

    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("L", (8, 8)).save(tmp_path / "m.png")
    loader = DataLoader(SegDataset(tmp_path, [("a.png", "m.png")], "val", 8, (1.0, 1.0), 2), num_workers=1)
    with pytest.raises(Exception) as err:
        next(iter(loader))
    message, code = failure(err.value)
    assert code == 3 and str(tmp_path / "a.png") in message and "\n" not in message
