"""The smoke profile shrunk for training tests on the shared smoke data (the `tiny_data` fixture)."""

from pipeline import params
from pipeline.train.trainer import RunPaths


def tiny_cfg(**overrides):
    # No MLflow here: tracking has its own tests (test_tracking.py), and each tracked run costs seconds.
    base = {"model.pretrained": False, "data.crop_size": 32, "run.ckpt_every": 4, "run.log_every": 2,
            "tracking.enabled": False}
    return params.replace(params.load(profile="smoke"), {**base, **overrides})


def tracked_cfg(**overrides):
    """tiny_cfg with tracking on (the store: $MLFLOW_TRACKING_URI, which the tests point)."""
    return tiny_cfg(**{"tracking.enabled": True, **overrides})


def paths(data, out):
    return RunPaths(data / "dataset", data / "splits" / "8", out)
