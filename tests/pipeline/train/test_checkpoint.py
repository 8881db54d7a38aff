"""Checkpoints that do not load (corrupt, tampered), the fallback to the previous one, a full disk."""

import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.errors import DataError
from pipeline.stages.synthetic import write_synthetic
from pipeline.tracking.tracker import NullTracker
from pipeline.train import checkpoint
from pipeline.train.fit import fit
from pipeline.train.trainer import Progress, RunPaths, Trainer
from tests.helpers.services import require_service
from tests.helpers.smoke import tiny_cfg

DDFP = [sys.executable, "-m", "pipeline.cli"]
SMOKE = ["--profile", "smoke", "--set", "model.pretrained=false", "--set", "data.crop_size=32",
         "--set", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, tiny_data) -> bytes:
    """The bytes of a real checkpoint of the smoke configuration (an untrained run's state)."""
    run = RunPaths(tiny_data / "dataset", tiny_data / "splits" / "8", tmp_path_factory.mktemp("run"))
    state = Trainer(tiny_cfg(), run, NullTracker(), torch.device("cpu")).state_dict(Progress())
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save(state, path)
    return path.read_bytes()


class RunsCode:
    """Unpickling this calls os.system: what a tampered checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tampered(path: Path, marker: Path, how: str = "torch.save") -> Path:
    payload = {"config": RunsCode(marker), "done": True}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how.removeprefix("pickle"))))
    return path


CORRUPTIONS = {
    "truncated": (lambda good: good[: len(good) // 2], "central directory"),
    "empty": (lambda good: b"", "empty"),
    "zip without central directory": (lambda good: good[:-22], "damaged"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_checkpoint_is_a_data_error_naming_file_and_reason(tmp_path, good_ckpt, kind):
    corrupt, reason = CORRUPTIONS[kind]
    path = tmp_path / "last.pt"
    path.write_bytes(corrupt(good_ckpt))
    with pytest.raises(DataError, match=reason) as err:
        checkpoint.load(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes_are_not_a_torch_checkpoint_whatever_error_the_unpickler_meets(tmp_path, seed):
    # Seeded, so the case is the same every run; among these seeds the unpickler fails with
    # UnpicklingError, IndexError, KeyError and UnicodeDecodeError alike.
    path = tmp_path / "last.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(DataError, match="not a torch checkpoint"):
        checkpoint.load(path)


def test_a_checkpoint_without_its_keys_is_a_data_error_naming_them(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"student": {}, "iteration": 3}, path)
    with pytest.raises(DataError, match=r"missing .*config") as err:
        checkpoint.load(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("how", ["torch.save", "pickle2", "pickle4"])
def test_a_checkpoint_that_asks_to_run_code_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "marker"
    path = tampered(tmp_path / "last.pt", marker, how)
    with pytest.raises(checkpoint.UntrustedCheckpoint,
                       match=r"refused: not a plain checkpoint \(it asks to run code: posix\.system\)") as err:
        checkpoint.load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert not marker.exists()


def test_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    for i in (1, 2, 3):
        checkpoint.save_atomic({"iteration": i}, path)
    assert torch.load(path, weights_only=True)["iteration"] == 3
    assert torch.load(tmp_path / "last.prev.pt", weights_only=True)["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("previous", ["good", "none"])
def test_a_corrupt_last_checkpoint_resumes_from_the_previous_one(tiny_data, tmp_path, capsys, previous):
    run = tmp_path / "run"
    paths = RunPaths(tiny_data / "dataset", tiny_data / "splits" / "8", run)
    short = {"run.ckpt_every": 2, "train.max_iters": 4}
    fit(tiny_cfg(**short), paths, progress=False)  # saves at 2 and 4
    prev = run / "last.prev.pt"
    assert torch.load(prev, weights_only=True)["iteration"] == 2
    if previous == "none":
        prev.unlink()
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    summary = fit(tiny_cfg(**{**short, "train.max_iters": 6}), paths, progress=False)
    out = capsys.readouterr().out
    assert f"{last}: cannot load it (damaged" in out
    if previous == "good":
        assert f"resumed {prev} at iteration 2" in out
    else:
        assert "no previous checkpoint loads, training from scratch" in out and "resumed" not in out
    assert summary.iterations == 6 and checkpoint.load(last)["iteration"] == 6
    assert torch.load(prev, weights_only=True)["iteration"] == 4  # the save before the last: a good one


def cli(*args, cwd=None):
    return subprocess.run(DDFP + list(args), capture_output=True, text=True, cwd=cwd, timeout=120)


def stderr_lines(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.strip()]


def test_evaluate_of_a_corrupt_checkpoint_is_one_clean_line(tmp_path, good_ckpt):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(good_ckpt[: len(good_ckpt) // 3])
    res = cli("evaluate", *SMOKE, "--ckpt", str(ckpt), "--data", str(tmp_path), "--split-dir", str(tmp_path),
              "--out", str(tmp_path / "m.json"))
    assert res.returncode == 3, res.stderr
    assert len(stderr_lines(res)) == 1 and str(ckpt) in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_tampered_checkpoint_is_refused_by_the_cli(tiny_data, tmp_path, good_ckpt, command):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    ckpt = tampered(run / "last.pt", marker)
    (run / "last.prev.pt").write_bytes(good_ckpt)  # a good one beside it: not a reason to go on
    before = ckpt.read_bytes()
    data = ["--data", str(tiny_data / "dataset"), "--split-dir", str(tiny_data / "splits" / "8")]
    if command == "train":
        res = cli("train", *SMOKE, *data, "--out", str(run))
    else:
        res = cli("evaluate", *SMOKE, *data, "--ckpt", str(ckpt), "--out", str(tmp_path / "m.json"))
    assert res.returncode == 3, res.stderr
    lines = stderr_lines(res)
    assert len(lines) == 1, res.stderr
    assert f"{ckpt}: refused: not a plain checkpoint (it asks to run code: posix.system)" in lines[0]
    assert not marker.exists() and "resumed" not in res.stdout
    assert ckpt.read_bytes() == before and (run / "last.prev.pt").read_bytes() == good_ckpt


# ---- a full disk ------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KB tmpfs: the real ENOSPC of a full disk (mounting needs root, as in CI)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        require_service("no `mount` command: cannot make a full disk")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                         text=True)
    if res.returncode:
        require_service(f"mounting a 256 KB tmpfs is not permitted here ({res.stderr.strip()}): needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_temporary(tiny_disk):
    ckpt = tiny_disk / "last.pt"
    checkpoint.save_atomic({"iteration": 1, "w": torch.zeros(1000)}, ckpt)
    before = ckpt.read_bytes()
    for _ in range(2):  # the second as a rerun would, the previous checkpoint now being last.pt itself
        with pytest.raises(DataError, match="no space left") as err:
            checkpoint.save_atomic({"iteration": 2, "w": torch.zeros(200_000)}, ckpt)
        assert str(err.value).startswith(f"{ckpt}: ") and "last.pt is kept" in str(err.value)
    assert ckpt.read_bytes() == before
    assert {p.name for p in tiny_disk.iterdir()} <= {"last.pt", "last.prev.pt"}


def test_a_full_disk_while_generating_the_dataset_leaves_nothing(tiny_disk):
    with pytest.raises(DataError, match="no space left") as err:
        write_synthetic(tiny_cfg(), tiny_disk / "dataset")
    assert str(tiny_disk / "dataset") in str(err.value)
    assert list(tiny_disk.iterdir()) == []
