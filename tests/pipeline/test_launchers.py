"""`ddfp submit --local -j N`: worker slots (a GPU each, else a share of the cores), the refusals of
bad input, and the smoke project's matrix trained by two workers at once with DVC clean afterwards."""

import json
import re
import threading
import time

import psutil
import pytest

from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.local_pool import worker_slots
from tests.helpers.project import ran_stages, run, smoke_project


def test_each_worker_gets_its_own_gpu_and_a_share_of_the_cores():
    slots = worker_slots(2, ["0", "3", "5"], 16)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "3"]
    assert {s["OMP_NUM_THREADS"] for s in slots} == {"8"}
    assert len(worker_slots(None, ["0", "1", "2"], 12)) == 3  # one per GPU by default


def test_without_gpus_the_workers_split_the_cores():
    slots = worker_slots(3, [], 8)
    assert len(slots) == 3 and all("CUDA_VISIBLE_DEVICES" not in s for s in slots)
    assert {s["OMP_NUM_THREADS"] for s in slots} == {"2"}
    assert worker_slots(4, [], 2)[0]["OMP_NUM_THREADS"] == "1"
    assert len(worker_slots(None, [], 8)) == 1


def test_semi_supervised_trainings_start_first_so_the_workers_end_together(monkeypatch, smoke_cfg):
    from pathlib import Path

    from pipeline.local_pool import LocalPool
    from pipeline.params import replace
    from pipeline.train.trainer import RunPaths

    labels = ["train@16-supervised", "train@16-ddfp", "train@64-supervised", "train@64-fixmatch"]
    runs = {label: RunPaths(Path("d"), Path("s"), Path(label), None) for label in labels}
    configs = {label: replace(smoke_cfg, {"train.method": label.split("-")[1]}) for label in labels}
    started = []
    monkeypatch.setattr(LocalPool, "run", lambda self, tasks, on_poll=None: started.extend(t.label for t in tasks))
    LocalPool(2).train(smoke_cfg, runs, configs, True, None)
    assert started == ["train@16-ddfp", "train@64-fixmatch", "train@16-supervised", "train@64-supervised"]


def test_more_workers_than_gpus_is_refused():
    with pytest.raises(UsageError, match=r"-j 3: .*2 GPU\(s\)"):
        worker_slots(3, ["0", "1"], 8)


@pytest.mark.parametrize("argv, message", [
    (["submit", "-j", "2"], "-j/--jobs: sets the workers of --local"),
    (["submit", "--local", "--no-wait", "-j", "1"], "--no-wait: the stages run in 1 local worker(s), which end with"),
])
def test_submit_refuses_options_its_launcher_cannot_honour(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing runs: the refusal comes before any dvc command
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--params", "none.yaml", "--profile", "smoke"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_jobs_must_be_a_positive_number(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--local", "-j", "0"])
    assert "'0' is not a positive whole number" in capsys.readouterr().err


def concurrent_workers(seen: list[int], stop: threading.Event) -> None:
    """Record, five times a second, how many local training workers the process table shows."""
    while not stop.is_set():
        count = 0
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            count += "pipeline.local_worker" in cmd and any(c.startswith("train@") for c in cmd)
        seen.append(count)
        time.sleep(0.2)


@pytest.mark.slow
def test_local_launcher_trains_the_matrix_two_at_a_time_and_leaves_dvc_clean(tmp_path):
    def edit(values):
        values["data"]["crop_size"] = 32
        values["train"]["max_iters"] = 10
        values["tracking"]["enabled"] = False

    env = smoke_project(tmp_path, edit, {"CUDA_VISIBLE_DEVICES": ""})
    seen: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=concurrent_workers, args=(seen, stop))
    watcher.start()
    try:
        out = run(["ddfp", "submit", "--local", "-j", "2", "--status-every", "5"], tmp_path, env)
    finally:
        stop.set()
        watcher.join()
    log = out.stdout + out.stderr
    assert max(seen) == 2, seen  # two trainings side by side, never more than -j
    assert len(re.findall(r"started local worker \d+ \(train@\S+, \d+ thread", log)) == 4, log[-3000:]
    assert len(re.findall(r"started local worker \d+ \(evaluate@", log)) == 4
    assert ran_stages(out.stdout) == {"download", "splits", "weights", "report"}  # nothing trained or evaluated here
    assert json.loads((tmp_path / "metrics" / "16" / "ddfp.json").read_text())["iterations"] == 10
    assert json.loads(run(["dvc", "status", "--json"], tmp_path, env).stdout or "{}") == {}
    assert ran_stages(run(["dvc", "repro"], tmp_path, env).stdout) == set()
