"""Training on two SLURM nodes: a second local cluster (slurm/start_two_nodes.sh) whose two nodes are
two slurmd daemons on this machine, so the job goes through everything a multi-node job does
(sbatch, srun's step over two nodes, submitit's environment from SLURM's variables, the rendezvous
at the first node of the job, gloo between the nodes' tasks) except a network between machines."""

import re
import threading
import subprocess
import time

import pytest

from pipeline.slurm import SlurmJobError, submit_training, wait
from tests.helpers.slurm import TWO_NODES_DIR, run_paths, smoke

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
DEADLINE_S = 150


def node_list(job_id: str) -> list[str]:
    """The job's nodes in SLURM's order (node id 0 first); scontrol keeps a finished job MinJobAge s."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    nodes = re.search(r" NodeList=(\S+)", out).group(1)
    return subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                          check=True).stdout.split()


def test_ddp_over_two_nodes_one_task_each(two_nodes, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(two_nodes))  # sbatch, srun in the job, scontrol: the two-node cluster
    cfg = smoke(tmp_path, **{"train.max_iters": 4, "train.batch_size": 2, "slurm.nodes": 2,
                             "slurm.tasks_per_node": 1, "slurm.cpus_per_task": 1})
    t0 = time.time()
    job = submit_training(cfg, {"8": run_paths(tiny_data, tmp_path / "run")})[0]
    # This cluster has no accounting (sacct answers nothing): submitit sees the end of a job by its
    # tasks' result files only, so a job killed before writing them would be waited on forever.
    while not job.done():
        if time.time() - t0 > DEADLINE_S:
            subprocess.run(["scancel", job.job_id], check=False)
            pytest.fail(f"job {job.job_id} not done after {DEADLINE_S} s:\n{job.stderr()}")
        time.sleep(1)
    [rank0] = wait([job], ["8"], poll_s=1)
    ranks = job.results()
    print(f"2-node DDP job: {time.time() - t0:.1f} s")
    assert [r.rank for r in ranks] == [0, 1] and all(r.iterations == 4 for r in ranks)
    assert rank0.rank == 0 and (tmp_path / "run" / "last.pt").is_file()
    # Exact: the gradients averaged between the nodes keep the ranks' parameters bit-identical.
    assert ranks[0].student_digest == ranks[1].student_digest
    # One task per node: submitit logs each task's environment, read from SLURM's variables
    # (SLURM_NODEID of SLURM_JOB_NUM_NODES, SLURM_PROCID of SLURM_NTASKS: the world size).
    for k in (0, 1):
        log = job.task(k).stdout() or ""
        assert f"local_rank=0(1), node={k}(2), global_rank={k}(2)" in log, log[-2000:]
    # Two nodes, each with its own slurmd that launched its task of the step (srun's step 0).
    nodes = node_list(job.job_id)
    assert nodes == ["localhost", "n2"]
    for node in nodes:
        assert f"launch task StepId={job.job_id}.0 " in (TWO_NODES_DIR / "log" / f"slurmd-{node}.log").read_text()


def test_a_cancelled_job_ends_the_wait_on_a_cluster_without_accounting(two_nodes, tiny_data, tmp_path, monkeypatch):
    # sacct answers nothing here, so the end of a job that never writes its result file is seen in squeue.
    monkeypatch.setenv("SLURM_CONF", str(two_nodes))
    cfg = smoke(tmp_path, **{"train.epochs": 50, "slurm.cpus_per_task": 1})
    job = submit_training(cfg, {"8": run_paths(tiny_data, tmp_path / "run")})[0]
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            wait([job], ["8"], poll_s=1)
        except SlurmJobError as err:
            outcome.append(err)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not (tmp_path / "run" / "progress.json").exists() and time.time() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", job.job_id], check=True)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the wait did not end after the job was cancelled"
    assert outcome and "CANCELLED" in str(outcome[0]) and job.job_id in str(outcome[0]), outcome
