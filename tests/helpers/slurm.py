"""The local SLURM test clusters (one node; two nodes): what they need, starting and stopping them,
and the smoke profile shrunk to their CPU tasks."""

import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline import params
from pipeline.train.trainer import RunPaths
from tests.helpers.project import ROOT

DAEMONS = ("sbatch", "sacct", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")
TWO_NODE_DAEMONS = ("sbatch", "slurmctld", "slurmd", "munged")  # no accounting: no slurmdbd, no MariaDB
# Where slurm/start_two_nodes.sh keeps the two-node cluster (its default), and the cluster's config.
TWO_NODES_DIR = Path("/tmp/ddfp-two-nodes")
TWO_NODES_CONF = TWO_NODES_DIR / "slurm.conf"


def missing_cluster(daemons: tuple[str, ...] = DAEMONS) -> str | None:
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (it starts munge and the SLURM daemons)"
    absent = [d for d in daemons if not shutil.which(d) and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"missing {', '.join(absent)}: apt-get install slurm-wlm munge slurmdbd mariadb-server (`make test` does, as root)"
    return None


def start(script: str) -> bool:
    """Run slurm/<script> (an idempotent start script); True when it started the cluster, False when
    the cluster was already up (then the caller leaves it running)."""
    t0 = time.time()
    res = subprocess.run(["bash", str(ROOT / "slurm" / script)], capture_output=True, text=True)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout}\n{res.stderr}"
    print(f"\n{script}: up in {time.time() - t0:.1f} s")
    return "already up" not in res.stdout


def stop(script: str) -> None:
    subprocess.run(["bash", str(ROOT / "slurm" / script)], check=False)


def smoke(tmp_path, **overrides):
    """The smoke profile shrunk to CPU tasks on the test cluster; logs and jobs under tmp_path."""
    base = {"model.pretrained": False, "data.crop_size": 32, "tracking.enabled": False, "run.log_every": 1,
            "slurm.folder": str(tmp_path / "slurm" / "%j"), "slurm.setup": [f"source {ROOT}/slurm/env.sh"],
            "slurm.time_min": 10}
    return params.load(None, "smoke", {**base, **overrides})


def run_paths(data, out, split="8"):
    return RunPaths(data / "dataset", data / "splits" / split, out)
