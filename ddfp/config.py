"""The method's frozen, typed settings: data, model, flow, perturbation, teacher, losses, training
recipe and evaluation protocol (MethodConfig).

The field defaults are the authors' values for Pascal VOC with ResNet-101 (their released configs).
Validation is strict and happens once: an unknown key, a wrong type or an out-of-range value raises
``ConfigError`` naming the dotted key and what was expected. Reading files, profiles and command-line
overrides, and the pipeline's own sections (downloads, tracking, SLURM, sweeps, run cadence), live
in pipeline.params; this module knows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Mapping, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ddfp.data.spec import DatasetSpec, get_spec

# The training methods, in the order tables list them (baseline first). What each one uses (teacher,
# strong views, feature perturbation, flow, reported network) is its row in ddfp.methods.METHODS.
Method = Literal["supervised", "mean_teacher", "fixmatch", "unimatch", "ddfp"]
METHODS: tuple[str, ...] = get_args(Method)


class ConfigError(ValueError):
    """A configuration problem, with the dotted key(s) at fault in the message."""


class Section(BaseModel):
    # strict: YAML "4" is not the number 4; extra=forbid: a typo is an error, not a silent default.
    # allow_inf_nan=False: an infinite or NaN eps, LR or weight would only show up as NaN losses.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class DataConfig(Section):
    dataset: Literal["synthetic", "pascal", "cityscapes"] = "pascal"
    splits: list[str] = Field(default_factory=lambda: ["92", "183", "366", "732", "1464"], min_length=1)
    split_seed: int = Field(default=0, ge=0)
    crop_size: int = Field(default=513, ge=16)
    scale_range: tuple[float, float] = (0.5, 2.0)

    @model_validator(mode="after")
    def _scales(self) -> "DataConfig":
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        return self


class SyntheticConfig(Section):
    """The generated VOC-format demo dataset (ddfp.data.synthetic)."""

    seed: int = Field(default=0, ge=0)
    num_train: int = Field(default=320, ge=4)
    num_val: int = Field(default=80, ge=2)
    image_size: int = Field(default=128, ge=32)


class ModelConfig(Section):
    backbone: Literal["mobilenet_v2", "resnet50", "resnet101"] = "resnet101"
    pretrained: bool = True
    output_stride: Literal[8, 16] = 16
    aspp_dilations: tuple[int, int, int] = (6, 12, 18)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    head_channels: int = Field(default=256, ge=8, description="ASPP and classifier width (the flow's input "
                               "dimension); the paper's 256, narrower only where a CPU budget needs it")


class FlowConfig(Section):
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


class PerturbConfig(Section):
    eps: float = Field(default=4.0, ge=0)
    mask: Literal["confident", "all"] = "confident"
    direction: Literal["density", "random", "dropout"] = Field(
        default="density", description="density: the flow's NLL gradient (DDFP); random: a random unit "
        "direction per pixel with the same eps and mask, the control that isolates the density direction; "
        "dropout: UniMatch's Dropout2d(0.5) of V under the same mask (eps unused), the other method's "
        "perturbation on DDFP's footing")


class TeacherConfig(Section):
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


class LossConfig(Section):
    sup: float = Field(default=1.0, ge=0)
    unsup: float = Field(default=0.5, ge=0)
    perturb: float = Field(default=0.5, ge=0)
    warmup_unsup: float = Field(default=1.0, ge=0, description="unsupervised weight before perturbation starts")


class TrainConfig(Section):
    method: Method = "ddfp"
    epochs: int = Field(default=80, ge=1)
    sup_only_epochs: int = Field(default=1, ge=0)
    flow_start_epoch: int = Field(default=1, ge=0)
    perturb_start_epoch: int = Field(default=2, ge=0)
    batch_size: int = Field(default=4, ge=1, description="labelled and unlabelled images per process and step")
    global_batch: int | None = Field(
        default=None, ge=1, description="labelled images per optimiser step over all processes (the paper's 16: "
        "4 GPUs x 4); fewer processes reach it by gradient accumulation. null: batch_size x processes")
    lr: float = Field(default=1e-3, gt=0)
    head_lr_mult: float | None = Field(default=None, gt=0, description="null: the dataset's value")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    poly_power: float = Field(default=0.9, ge=0)
    conf_thresh: float = Field(default=0.95, ge=0, le=1)
    cutmix_prob: float = Field(default=0.5, ge=0, le=1)
    seed: int = Field(default=2, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_iters: int | None = Field(default=None, ge=1, description="stop early (benchmarks, tests)")
    iters_per_epoch: int | None = Field(
        default=None, ge=1, description="null: |unlabelled| / (batch x processes), the authors' epoch; a number "
        "gives every split the same iteration budget")

    @model_validator(mode="after")
    def _phases(self) -> "TrainConfig":
        if not self.sup_only_epochs <= self.flow_start_epoch <= self.perturb_start_epoch:
            raise ValueError("need sup_only_epochs <= flow_start_epoch <= perturb_start_epoch")
        return self


class EvalConfig(Section):
    mode: Literal["whole", "sliding"] | None = Field(default=None, description="null: the dataset's protocol")
    crop_size: int | None = Field(default=None, ge=16, description="null: data.crop_size")
    stride_ratio: float = Field(default=2 / 3, gt=0, le=1)
    batch_size: int = Field(default=1, ge=1)
    model: Literal["teacher", "student"] = Field(
        default="teacher", description="reported model of a method with an EMA teacher; the others report the "
        "student (ddfp.methods.reported_model)"
    )


@dataclass(frozen=True)
class EvalProtocol:
    """How validation predicts, with every null-means-derived key of `eval` resolved."""

    mode: Literal["whole", "sliding"]
    crop_size: int
    stride_ratio: float
    num_classes: int

    @property
    def stride(self) -> int:
        return max(int(self.crop_size * self.stride_ratio), 1)


class MethodConfig(Section):
    """The method's settings: what trains the weights and how they are scored. The pipeline's
    configuration extends it with where and how runs go (pipeline.params.Config)."""

    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    model: ModelConfig = ModelConfig()
    flow: FlowConfig = FlowConfig()
    perturb: PerturbConfig = PerturbConfig()
    teacher: TeacherConfig = TeacherConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    # Derived settings, resolved here once instead of at every use site.
    @cached_property
    def spec(self) -> DatasetSpec:
        return get_spec(self.data.dataset)

    @property
    def head_lr_mult(self) -> float:
        return self.train.head_lr_mult if self.train.head_lr_mult is not None else self.spec.head_lr_mult

    @property
    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol(self.eval.mode or self.spec.eval_mode, self.eval.crop_size or self.data.crop_size,
                            self.eval.stride_ratio, self.spec.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe): what checkpoints and trackers store."""
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {'perturb.eps': 4.0} (for trackers and sweeps)."""
        return flatten(self.to_dict())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
