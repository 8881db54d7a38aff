"""One frozen, typed configuration for everything, built from params.yaml.

Layers, later wins:
  1. the field defaults below: the authors' values for Pascal VOC with ResNet-101 (their released configs);
  2. a mapping (params.yaml, or a named profile from profiles/<name>.yaml over its parent);
  3. overrides ``key.sub=value`` (CLI ``--set``, sweep trials), parsed as YAML scalars.

Validation happens once, here: an unknown key, a wrong type or an out-of-range value raises
``ConfigError`` naming the dotted key and what was expected, before anything runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class ConfigError(ValueError):
    """A configuration problem, with the dotted key(s) at fault in the message."""


class _Section(BaseModel):
    # strict: YAML "4" is not the number 4; extra=forbid: a typo is an error, not a silent default.
    # allow_inf_nan=False: an infinite or NaN eps, LR or weight would only show up as NaN losses.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class FileSource(_Section):
    """One remote file of a dataset: where it comes from, how it is checked, where it goes."""

    url: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    dest: str = Field(min_length=1, description="path relative to the dataset root (ddfp download --out)")
    extract: bool = False
    # Files with no published checksum (split lists at a pinned commit) may omit both hashes: the
    # download then warns and prints the sha256 to pin.


class DataConfig(_Section):
    dataset: Literal["synthetic", "pascal", "cityscapes"] = "pascal"
    splits: list[str] = Field(default_factory=lambda: ["92", "183", "366", "732", "1464"], min_length=1)
    split_seed: int = Field(default=0, ge=0)
    crop_size: int = Field(default=513, ge=16)
    scale_range: tuple[float, float] = (0.5, 2.0)
    num_workers: int = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _scales(self) -> "DataConfig":
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        return self


class DownloadConfig(_Section):
    mirror: str = Field(default="", description="base URL replacing scheme+host of every url")
    files: list[FileSource] = Field(default_factory=list)
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=3, ge=0)


class SyntheticConfig(_Section):
    """The generated VOC-format demo dataset (ddfp.data.synthetic)."""

    seed: int = Field(default=0, ge=0)
    num_train: int = Field(default=320, ge=4)
    num_val: int = Field(default=80, ge=2)
    image_size: int = Field(default=128, ge=32)


class ModelConfig(_Section):
    backbone: Literal["mobilenet_v2", "resnet50", "resnet101"] = "resnet101"
    pretrained: bool = True
    output_stride: Literal[8, 16] = 16
    aspp_dilations: tuple[int, int, int] = (6, 12, 18)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    head_channels: int = Field(default=256, ge=8, description="ASPP and classifier width (the flow's input "
                               "dimension); the paper's 256, narrower only where a CPU budget needs it")


class FlowConfig(_Section):
    n_blocks: int = Field(default=2, ge=1)
    hidden_dim: int = Field(default=256, ge=1)
    clamp: float = Field(default=2.0, gt=0)
    input_noise: float = Field(default=0.05, ge=0)
    num_samples: int = Field(default=20480, ge=1, description="pixels sampled per flow step")
    init_std: float = Field(default=0.05, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = Field(default=50.0, gt=0)
    lr_decay: float = Field(default=0.01, gt=0, le=1, description="total LR factor over training")
    perm_seed: int = Field(default=0, ge=0)
    fit_on: Literal["student", "teacher"] = Field(
        default="student", description="student: the student's own detached clean main-pass features, the "
        "distribution the perturbation search queries; teacher: the teacher's clean features (the previous "
        "behaviour, far from the query with an eval-mode EMA teacher)")


class PerturbConfig(_Section):
    eps: float = Field(default=4.0, ge=0)
    mask: Literal["confident", "all"] = "confident"
    direction: Literal["density", "random"] = Field(
        default="density", description="density: the flow's NLL gradient (DDFP); random: a random unit "
        "direction per pixel with the same eps and mask, the control that isolates the density direction")


class TeacherConfig(_Section):
    mode: Literal["ema", "student_bn"] = "ema"
    ema_decay: float = Field(default=0.999, ge=0, le=1)
    pseudo_label_mode: Literal["eval", "train"] = "eval"

    @model_validator(mode="after")
    def _student_bn_needs_train_mode(self) -> "TeacherConfig":
        # student_bn copies the weights, never the buffers: only a train-mode teacher has BN
        # statistics of its own; in eval mode they would stay at their initial values forever.
        if self.mode == "student_bn" and self.pseudo_label_mode == "eval":
            raise ValueError("teacher.mode: student_bn with teacher.pseudo_label_mode: eval never updates the "
                             "teacher's BN statistics; use pseudo_label_mode: train")
        return self


class LossConfig(_Section):
    sup: float = Field(default=1.0, ge=0)
    unsup: float = Field(default=0.5, ge=0)
    perturb: float = Field(default=0.5, ge=0)
    warmup_unsup: float = Field(default=1.0, ge=0, description="unsupervised weight before perturbation starts")


class TrainConfig(_Section):
    method: Literal["supervised", "mean_teacher", "ddfp"] = "ddfp"
    epochs: int = Field(default=80, ge=1)
    sup_only_epochs: int = Field(default=1, ge=0)
    flow_start_epoch: int = Field(default=1, ge=0)
    perturb_start_epoch: int = Field(default=2, ge=0)
    batch_size: int = Field(default=4, ge=1, description="labelled and unlabelled images per process")
    lr: float = Field(default=1e-3, gt=0)
    head_lr_mult: float | None = Field(default=None, gt=0, description="null: the dataset's value")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    poly_power: float = Field(default=0.9, ge=0)
    conf_thresh: float = Field(default=0.95, ge=0, le=1)
    cutmix_prob: float = Field(default=0.5, ge=0, le=1)
    seed: int = Field(default=2, ge=0)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_every: int = Field(default=4, ge=1, description="epochs between evaluations")
    ckpt_every: int = Field(default=200, ge=1, description="iterations between checkpoints")
    log_every: int = Field(default=20, ge=1, description="iterations between logged losses (one host sync)")
    max_iters: int | None = Field(default=None, ge=1, description="stop early (benchmarks, tests)")
    iters_per_epoch: int | None = Field(
        default=None, ge=1, description="null: |unlabelled| / (batch x processes), the authors' epoch; a number "
        "gives every split the same iteration budget")
    launcher: Literal["local", "slurm"] = Field(
        default="local", description="local: this process (or torchrun's); slurm: `ddfp train` submits a job and waits"
    )

    @model_validator(mode="after")
    def _phases(self) -> "TrainConfig":
        if not self.sup_only_epochs <= self.flow_start_epoch <= self.perturb_start_epoch:
            raise ValueError("need sup_only_epochs <= flow_start_epoch <= perturb_start_epoch")
        return self


class EvalConfig(_Section):
    mode: Literal["whole", "sliding"] | None = Field(default=None, description="null: the dataset's protocol")
    crop_size: int | None = Field(default=None, ge=16, description="null: data.crop_size")
    stride_ratio: float = Field(default=2 / 3, gt=0, le=1)
    batch_size: int = Field(default=1, ge=1)
    model: Literal["teacher", "student"] = Field(
        default="teacher", description="reported model; the supervised baseline has no teacher and uses the student"
    )


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = Field(
        default=None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the project directory"
    )
    experiment: str | None = Field(default=None, description="null: the dataset's name")
    checkpoint_max_mb: float = Field(
        default=100.0, ge=0, description="log the final checkpoint as an artifact up to this size, else its path"
    )
    num_overlays: int = Field(default=4, ge=0, le=32, description="validation prediction overlays logged per run")


class SlurmConfig(_Section):
    """Where and how `ddfp submit` (and `ddfp train` with train.launcher: slurm) runs on a cluster.

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


class ParamSpace(_Section):
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


class SweepConfig(_Section):
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
                         "tasks with train.launcher: slurm")
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

    @model_validator(mode="after")
    def _known_keys(self) -> "SweepConfig":
        for where, keys in (("params", self.params), ("overrides", self.overrides)):
            for key in keys:
                if key.startswith(("sweep.", "profile")) or not _is_field(key):
                    raise ValueError(f"{where}: {key!r} is not a config key (dotted, e.g. perturb.eps)")
        both = set(self.params) & set(self.overrides)
        if both:
            raise ValueError(f"{sorted(both)} both searched and overridden")
        return self


def _is_field(dotted: str) -> bool:
    model: Any = Config
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        model = fields[part].annotation
    return not hasattr(model, "model_fields")  # a leaf, not a whole section


class Config(_Section):
    profile: str = "pascal"
    # The pipeline's method axis: `dvc repro` trains and evaluates each of these on every split
    # (train.method is then set per run); the baseline beside DDFP makes the gain visible.
    methods: list[Literal["supervised", "mean_teacher", "ddfp"]] = Field(
        default_factory=lambda: ["supervised", "ddfp"], min_length=1)
    data: DataConfig = DataConfig()
    download: DownloadConfig = DownloadConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    model: ModelConfig = ModelConfig()
    flow: FlowConfig = FlowConfig()
    perturb: PerturbConfig = PerturbConfig()
    teacher: TeacherConfig = TeacherConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    slurm: SlurmConfig = SlurmConfig()
    sweep: SweepConfig = Field(default_factory=SweepConfig)  # a factory: its validator needs Config

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError("each method once")
        return methods

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe): what checkpoints and trackers store."""
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {'perturb.eps': 4.0} (for trackers and sweeps)."""
        return _flatten(self.to_dict())


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_s = "" if isinstance(got, Mapping) else f" (got {got!r})"
        lines.append(f"{key}: {e['msg']}{got_s}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _tuples_from_lists(tree: Any) -> Any:
    # YAML has no tuples; strict pydantic wants them for tuple fields. Lists of mappings stay lists.
    if isinstance(tree, Mapping):
        return {k: _tuples_from_lists(v) for k, v in tree.items()}
    if isinstance(tree, list) and tree and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tree):
        return tuple(tree)
    if isinstance(tree, list):
        return [_tuples_from_lists(v) for v in tree]
    return tree


def _lists_where_expected(tree: dict[str, Any]) -> dict[str, Any]:
    # data.splits is a list of names; numbers in YAML ([16, 32]) are accepted as names.
    data = tree.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("splits"), (list, tuple)):
        tree = {**tree, "data": {**data, "splits": [str(s) for s in data["splits"]]}}
    return tree


def from_mapping(tree: Mapping[str, Any]) -> Config:
    """Validate a nested mapping into a Config, or raise ConfigError naming every bad key."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"configuration must be a mapping, got {type(tree).__name__}")
    tree = _lists_where_expected(_tuples_from_lists(dict(tree)))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b'; refuses to descend into a non-mapping."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, cannot set {key}")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['perturb.eps=2', 'data.splits=[16,32]'] -> {'perturb.eps': 2, ...} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; mappings merge, everything else (lists included) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return tree


def profile_tree(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    """The full mapping of a named profile: its file merged over its `extends:` parent, if any."""
    path = profiles_dir / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise ConfigError(f"profile: unknown profile {name!r}; known: {', '.join(known)}")
    tree = read_yaml(path)
    parent = tree.pop("extends", None)
    base = profile_tree(parent, profiles_dir) if parent else {}
    return deep_merge(base, {**tree, "profile": name})


def load(
    params: Path | None = Path("params.yaml"),
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    profiles_dir: Path = PROFILES_DIR,
) -> Config:
    """params.yaml (or the named profile instead of it) + dotted overrides -> validated Config."""
    tree = profile_tree(profile, profiles_dir) if profile else (read_yaml(params) if params else {})
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    return from_mapping(tree)


def replace(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new validated Config with dotted fields replaced (how sweep trials derive theirs)."""
    tree = cfg.to_dict()
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return from_mapping(tree)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
