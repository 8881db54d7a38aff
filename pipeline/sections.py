"""The pipeline's own configuration sections: downloads, run cadence and device, tracking, SLURM and
sweeps. pipeline.params puts them beside the method's sections (ddfp.config) in one Config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ddfp.config import Section


class FileSource(Section):
    """One remote file of a dataset: where it comes from, how it is checked, where it goes."""

    url: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    dest: str = Field(min_length=1, description="path relative to the dataset root (ddfp download --out); an "
                      "archive is kept at the same path under the archives folder beside the root")
    extract: bool = False
    # Files with no published checksum (split lists at a pinned commit) may omit both hashes: the
    # download then warns and prints the sha256 to pin.


class DownloadConfig(Section):
    mirror: str = Field(default="", description="base URL replacing scheme+host of every url")
    files: list[FileSource] = Field(default_factory=list)
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=3, ge=0)


class RunConfig(Section):
    """How, where and how often a run executes: nothing here changes its trained weights, so editing
    these neither retrains under `dvc repro` nor stops a checkpoint from resuming."""

    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    launcher: Literal["local", "slurm"] = Field(
        default="local", description="local: this process (or torchrun's); slurm: `ddfp train` submits a job and waits"
    )
    num_workers: int = Field(default=4, ge=0, description="DataLoader worker processes")
    log_every: int = Field(default=20, ge=1, description="iterations between logged losses (one host sync)")
    ckpt_every: int = Field(default=200, ge=1, description="iterations between checkpoints")
    eval_every: int = Field(default=4, ge=1, description="epochs between evaluations")
    channels_last: bool = Field(
        default=True, description="train the segmentation nets in NHWC memory format: the layout of tensor "
                                  "cores and oneDNN (5-7 % faster steps measured on CPU)"
    )


class TrackingConfig(Section):
    enabled: bool = True
    uri: str | None = Field(
        default=None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the project directory"
    )
    experiment: str | None = Field(default=None, description="null: the dataset's name")
    checkpoint_max_mb: float = Field(
        default=100.0, ge=0, description="without log_model: log the evaluated checkpoint as an artifact up to "
                                           "this size, else its path"
    )
    num_overlays: int = Field(default=4, ge=0, le=32, description="validation prediction overlays logged per run")
    log_model: bool = Field(default=True, description="log the reported model (inference weights) as an MLflow model")
    register_model: bool = Field(default=False, description="and register it: one model per dataset and method, "
                                                            "a version per run tagged with split and seed")
    system_metrics: bool = Field(default=True, description="log CPU, memory, disk, network and NVIDIA GPU use "
                                                           "under system/ in each training run (MLflow's monitor)")
    system_metrics_interval_s: float = Field(
        default=10.0, ge=0.1, description="seconds between samples (each also reads the run's status from the "
                                          "store); MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it"
    )


class SlurmConfig(Section):
    """Where and how `ddfp submit` (and `ddfp train` with run.launcher: slurm) runs on a cluster.

    One task per GPU; train.batch_size is per task, so the global batch is batch_size x tasks.
    Credentials never go here (the sbatch script is a file): reference environment variables instead.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=0, ge=0, description="0: CPU-only tasks (gloo)")
    tasks_per_node: int = Field(default=1, ge=1, description="training processes per node (one per GPU)")
    cpus_per_task: int = Field(default=1, ge=1)
    mem_gb: int | None = Field(default=None, ge=1, description="null: the partition's default")
    time_min: int = Field(default=60, ge=1, description="time limit per run; longer training is requeued")
    signal_delay_s: int = Field(default=120, ge=10, description="USR2 this long before the limit: save and requeue")
    constraint: str | None = None
    array_parallelism: int | None = Field(
        default=None, ge=1, description="most tasks of one job array running at once (sbatch --array=...%N), so "
        "many runs (`ddfp submit`, sweep workers) do not flood a shared partition; null: no cap")
    additional_parameters: dict[str, str | int | bool] = Field(
        default_factory=dict, description="more sbatch options, e.g. {exclusive: true, reservation: x}"
    )
    setup: list[str] = Field(default_factory=lambda: ["source slurm/env.sh"],
                             description="shell lines run in the job before training")
    max_num_timeout: int = Field(default=10, ge=0, description="requeues after a time limit before giving up")
    folder: str = Field(default="slurm_logs/%j", min_length=1, description="submitit folder (sbatch script, logs)")

    @model_validator(mode="after")
    def _one_task_per_gpu(self) -> "SlurmConfig":
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(f"tasks_per_node ({self.tasks_per_node}) must equal gpus_per_node "
                             f"({self.gpus_per_node}): one training process per GPU")
        return self


class ParamSpace(Section):
    """One searched value: a float or int range (log-uniform when log) or a list of choices."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0, description="quantisation of a float/int range")
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "ParamSpace":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"need low < high, got low={self.low} high={self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: needs low > 0 and no step")
        return self


def _default_space() -> dict[str, ParamSpace]:
    return {"perturb.eps": ParamSpace(low=0.5, high=16.0, log=True),
            "train.conf_thresh": ParamSpace(low=0.5, high=0.99)}


class SweepConfig(Section):
    """`ddfp sweep`: an Optuna study over `params` (dotted config keys), each trial a training run on
    the sweep's schedule (`overrides` applied to the config), scored by the final val mIoU."""

    study: str = Field(default="ddfp-sweep", pattern=r"^[A-Za-z0-9_.\-]+$")
    storage: str | None = Field(
        default=None, description="null: $OPTUNA_STORAGE, else sqlite:///optuna.db in the project directory; "
        "${VAR} is expanded from the environment (keep passwords there)")
    params: dict[str, ParamSpace] = Field(default_factory=_default_space, min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict, description="the sweep's (shorter) schedule")
    split: str | None = Field(default=None, description="labelled split to tune on; null: the first of data.splits")
    n_trials: int = Field(default=20, ge=1, description="the study's total: a rerun continues up to it")
    workers: int = Field(default=1, ge=1, description="parallel workers: local processes, or SLURM array "
                         "tasks with run.launcher: slurm")
    timeout_min: float | None = Field(default=None, gt=0, description="per worker: start no trial after this")
    sampler: Literal["tpe", "random", "qmc", "gp"] = "tpe"
    startup_trials: int = Field(default=10, ge=0, description="random trials before TPE/GP model the space")
    seed: int | None = Field(default=0, ge=0, description="sampler seed (worker i uses seed + i)")
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_startup_trials: int = Field(default=5, ge=0, description="median: trials before pruning starts")
    pruner_warmup_steps: int = Field(default=0, ge=0, description="epochs before a trial may be pruned")
    heartbeat_interval_s: int | None = Field(default=60, ge=1, description="RDB storage: null disables retries")
    grace_period_s: int | None = Field(default=None, ge=1, description="null: 2 x heartbeat_interval_s")
    max_retry: int = Field(default=3, ge=0, description="retries of a trial whose worker died")


__all__ = ["DownloadConfig", "FileSource", "ParamSpace", "RunConfig", "SlurmConfig", "SweepConfig",
           "TrackingConfig"]
