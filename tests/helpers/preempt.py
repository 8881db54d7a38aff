"""Jobs for the preemption tests: the real TrainJob with a slow evaluation or checkpoint write in
its first run, so that a test can send its signal while the job is inside one. A marker file in the
run directory says when the job is there; the delay is the only change to what the job does."""

import os
import time
from pathlib import Path

from pipeline.slurm import TrainJob
from pipeline.train import checkpoint, trainer

HOLD_S = 6.0  # how long the first evaluation / checkpoint write waits: the test signals within it


def first_run() -> bool:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0


class SlowEvaluationJob(TrainJob):
    """The first run's first evaluation announces itself (<run>/evaluating) and waits, up to HOLD_S,
    for the stop request to arrive, then evaluates as usual (and sees the request at its first batch)."""

    def run(self, cfg, paths, env, stop):
        real = trainer.evaluate_models
        marker = Path(paths.out_dir) / "evaluating"

        def slow(models, loader, cfg_, device, stop_check=None):
            if first_run() and not marker.exists():
                marker.touch()
                deadline = time.monotonic() + HOLD_S
                while time.monotonic() < deadline and not stop.is_set():
                    time.sleep(0.05)
            return real(models, loader, cfg_, device, stop_check)

        trainer.evaluate_models = slow
        return super().run(cfg, paths, env, stop)


class SlowCheckpointJob(TrainJob):
    """The first run's first checkpoint write from iteration 12 on announces itself (<run>/saving)
    and takes HOLD_S longer than it would."""

    def run(self, cfg, paths, env, stop):
        real = checkpoint.save_atomic
        marker = Path(paths.out_dir) / "saving"

        def slow(state, path):
            if first_run() and state["iteration"] >= 12 and not marker.exists():
                marker.write_text(str(state["iteration"]))
                time.sleep(HOLD_S)
            return real(state, path)

        checkpoint.save_atomic = slow
        return super().run(cfg, paths, env, stop)
