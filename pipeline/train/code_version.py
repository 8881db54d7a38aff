"""A digest of the code that computes a training run's weights, stored in its checkpoint.

`dvc repro` reruns a train stage when its code changes; the trainer then must not find the old run
finished (or resume it half-way) under the same configuration: a checkpoint of other code trains
again from scratch. Code that only records or schedules a run (tracking, checkpoint files, SLURM,
the CLI) is left out, so its edits leave finished runs finished.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import ddfp

# The method, and the pipeline modules that feed it data, step the optimisers and average gradients.
PIPELINE_MODULES = ("train/fit.py", "train/trainer.py", "train/learner.py", "train/loaders.py", "train/distributed.py")


ROOT = Path(ddfp.__file__).parent.parent  # holds ddfp/ and pipeline/


def training_sources() -> list[Path]:
    return sorted((ROOT / "ddfp").rglob("*.py")) + [ROOT / "pipeline" / name for name in PIPELINE_MODULES]


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the sources' paths (relative to the project) and contents."""
    digest = hashlib.sha256()
    for path in training_sources():
        digest.update(f"{path.relative_to(ROOT).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


__all__ = ["PIPELINE_MODULES", "code_digest", "training_sources"]
