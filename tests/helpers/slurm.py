"""The one-node SLURM test cluster: what it needs, and the smoke profile shrunk to its CPU tasks."""

import os
import shutil
from pathlib import Path

from pipeline import params
from pipeline.train.trainer import RunPaths
from tests.helpers.project import ROOT

DAEMONS = ("sbatch", "sacct", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")


def missing_cluster() -> str | None:
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root (it starts munge, MariaDB and the SLURM daemons)"
    absent = [d for d in DAEMONS if not shutil.which(d) and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"missing {', '.join(absent)}: apt-get install slurm-wlm munge slurmdbd mariadb-server (`make test` does, as root)"
    return None


def smoke(tmp_path, **overrides):
    """The smoke profile shrunk to CPU tasks on the test cluster; logs and jobs under tmp_path."""
    base = {"model.pretrained": False, "data.crop_size": 32, "tracking.enabled": False, "run.log_every": 1,
            "slurm.folder": str(tmp_path / "slurm" / "%j"), "slurm.setup": [f"source {ROOT}/slurm/env.sh"],
            "slurm.time_min": 10}
    return params.load(None, "smoke", {**base, **overrides})


def run_paths(data, out, split="8"):
    return RunPaths(data / "dataset", data / "splits" / split, out)
