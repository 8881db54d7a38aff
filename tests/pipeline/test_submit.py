"""`ddfp submit` on the real one-node cluster: every changed train stage of a fresh smoke project as
one job array and every changed evaluation as a second one, DVC's lock and cache as a sequential
`dvc repro` leaves them, a second call that submits nothing; `--no-wait` with a local `dvc repro`
beside it; `ddfp status`; a cancelled job."""

import json
import re
import subprocess
import threading
import time

import pytest

from tests.helpers.project import ran_stages, run, smoke_project

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STAGES = {f"train@{split}-{method}" for split in ("8", "16") for method in ("supervised", "ddfp")}
EVALUATIONS = {stage.replace("train@", "evaluate@") for stage in STAGES}


def fresh_project(tmp_path, **train):
    """A smoke project (2 splits x supervised, ddfp: four train stages) on the SLURM launcher; its
    jobs' submitit folders under tmp_path."""
    def edit(values):
        values["data"]["crop_size"] = 32
        values["train"].update(train)
        values["run"]["launcher"] = "slurm"
        values["tracking"]["enabled"] = False
        values["slurm"].update(folder=str(tmp_path / "slurm" / "%j"), time_min=10)

    dest = tmp_path / "project"
    dest.mkdir()
    return dest, smoke_project(dest, edit)


def running_tasks(seen: list[int], stop: threading.Event) -> None:
    """Record, twice a second, how many tasks squeue shows RUNNING."""
    while not stop.is_set():
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True).stdout
        seen.append(len(out.split()))
        time.sleep(0.5)


def evaluation_records(tmp_path) -> dict[str, dict]:
    """What each evaluation job wrote about itself beside its submitit logs, by stage."""
    records = [json.loads(p.read_text()) for p in (tmp_path / "slurm").rglob("*_evaluation.json")]
    return {r["stage"]: r for r in records}


def dvc_status(dest, env) -> dict:
    return json.loads(run(["dvc", "status", "--json"], dest, env).stdout or "{}")


def test_submit_trains_the_changed_stages_in_parallel_and_leaves_dvc_clean(cluster, tmp_path):
    dest, env = fresh_project(tmp_path, max_iters=20)
    seen: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=running_tasks, args=(seen, stop))
    watcher.start()
    t0 = time.time()
    try:
        out = run(["ddfp", "submit", "--status-every", "5"], dest, env)
    finally:
        stop.set()
        watcher.join()
    print(f"ddfp submit of 4 train stages: {time.time() - t0:.1f} s; most tasks running at once: {max(seen)}")
    log = out.stdout + out.stderr
    assert len(re.findall(r"submitted SLURM job \d+_\d+ \(train@", log)) == 4
    assert max(seen) >= 2  # the array's tasks ran side by side (2 CPUs, 1 per task)
    # The status table while waiting: one line per run, with its job and log.
    assert re.search(r"train@16-ddfp\s+16\s+ddfp\s+0\s+\S+ \(job \d+_\d+\)", log), log[-3000:]
    # Only the report ran here; dvc commit recorded the trainings and the evaluations.
    assert len(re.findall(r"submitted SLURM job \d+_\d+ \(evaluate@", log)) == 4
    assert ran_stages(out.stdout) == {"download", "splits", "weights", "report"}
    # Each metrics file was written inside its SLURM job, and not rewritten here afterwards.
    records = evaluation_records(tmp_path)
    assert set(records) == EVALUATIONS
    for stage, record in records.items():
        assert f"submitted SLURM job {record['slurm_job_id']} ({stage})" in log, (stage, record)
        assert (dest / record["out"]).stat().st_mtime_ns == record["out_mtime_ns"], stage
    assert json.loads((dest / "metrics" / "16" / "ddfp.json").read_text())["iterations"] == 20
    assert dvc_status(dest, env) == {}
    again = run(["ddfp", "submit"], dest, env)
    assert "submitted SLURM job" not in again.stderr and "0 train stage(s)" in again.stderr
    assert ran_stages(again.stdout) == set()
    assert ran_stages(run(["dvc", "repro"], dest, env).stdout) == set()
    # ddfp status: every run finished, with its val mIoU.
    table = run(["ddfp", "status"], dest, env).stdout
    assert len(re.findall(r"finished, (COMPLETED|ended) \(job", table)) == 4 and "20/20" in table, table


def test_no_wait_then_a_local_repro_is_refused_and_submit_waits_for_the_jobs(cluster, tmp_path):
    # Long enough (about a minute a job here) that the jobs still run while the commands below look.
    dest, env = fresh_project(tmp_path, epochs=10, max_iters=None)
    first = run(["ddfp", "submit", "--no-wait"], dest, env)
    jobs = set(re.findall(r"submitted SLURM job (\d+_\d+)", first.stderr))
    assert len(jobs) == 4
    # A local repro on the login node must not train beside the queued or running jobs.
    params = (dest / "params.yaml").read_text()
    (dest / "params.yaml").write_text(params.replace("launcher: slurm", "launcher: local"))  # no stage's param
    # The array's last task: still queued behind the first two (2 CPUs), however fast they train.
    local = run(["dvc", "repro", "train@16-ddfp"], dest, env, check=False)
    (dest / "params.yaml").write_text(params)
    assert local.returncode != 0 and "belongs to SLURM job" in local.stdout + local.stderr, local.stdout[-3000:]
    status = run(["ddfp", "status"], dest, env).stdout
    assert sum(f"(job {job})" in status for job in jobs) == 4, status
    second = run(["ddfp", "submit"], dest, env)
    assert not re.search(r"submitted SLURM job \S+ \(train@", second.stderr)  # only the evaluations are new
    assert len(re.findall(r"submitted SLURM job \S+ \(evaluate@", second.stderr)) == 4
    assert {job for job in jobs if f"SLURM job {job} already trains" in second.stderr} | {
        job for job in jobs if f"(job {job})" in second.stderr} == jobs
    assert dvc_status(dest, env) == {}
    assert json.loads((dest / "metrics" / "8" / "supervised.json").read_text())["iterations"] == 100


def test_a_cancelled_job_fails_submit_clearly_and_keeps_what_finished(cluster, tmp_path):
    dest, env = fresh_project(tmp_path, epochs=50, max_iters=None)
    proc = subprocess.Popen(["ddfp", "submit"], cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    job = None
    while job is None:
        line = proc.stderr.readline()
        assert line, "ddfp submit ended before submitting"
        if m := re.search(r"submitted SLURM job (\d+)_0 \(train@8-supervised\)", line):
            job = m.group(1)
    subprocess.run(["scancel", job], check=True)  # the whole array
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 4 and "Traceback" not in err  # a failed job: EXIT_JOB
    assert f"SLURM job {job}_0 (train@8-supervised)" in err and "CANCELLED" in err and "_log.out" in err
