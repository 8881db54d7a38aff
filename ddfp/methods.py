"""The method table: one row per training method saying what it uses. Phases, BN routing, the teacher
update, the reported network, the data (strong views), the report and the ablation read a row, never
a method's name.

Adding a method: write its step (a function of (models, batch, phase, cfg, diagnostics) returning a
StepOutput, as ddfp.weak_strong does), add its name to ddfp.config.Method and its row here. Everything
else (the DVC matrix, `ddfp ablation`, sweeps, the report, MLflow, the step benchmark, `ddfp submit`)
takes it from the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Collection, Literal, Protocol, get_args

from ddfp.config import Method, MethodConfig
from ddfp.step import Batch, Models, Phase, StepOutput, semi_step, supervised_step
from ddfp.weak_strong import FIXMATCH, UNIMATCH, weak_strong_step

PseudoLabels = Literal["none", "ema_teacher", "self"]


class StepFn(Protocol):
    def __call__(self, models: Models, batch: Batch, phase: Phase, cfg: MethodConfig,
                 diagnostics: bool = True) -> StepOutput: ...


@dataclass(frozen=True)
class MethodSpec:
    """What one method uses. Every method trains supervised before train.sup_only_epochs; `step`
    runs its semi-supervised phase after that."""

    pseudo_labels: PseudoLabels  # none; an EMA teacher (handed off, updated, evaluated); the network itself
    strong_views: int  # strong views of each unlabelled image the step reads
    perturbation: Literal["none", "offset", "backbone_dropout"]  # offset: DDFP's shift of V (perturb.direction)
    aux_bn: bool  # the classifier's auxiliary BN for perturbed rows
    fits_flow: bool  # trains the density estimator
    step: StepFn | None  # its semi-supervised phase (None: it has none)
    source: str  # the released code it follows
    # Its unlabelled loss weights and mixing boxes are the released code's constants, so loss.unsup,
    # loss.warmup_unsup, loss.perturb and train.cutmix_prob do not reach it.
    released_weights: bool = False

    @property
    def semi(self) -> bool:
        return self.pseudo_labels != "none"

    @property
    def reported(self) -> Literal["teacher", "student"]:
        """The network a run of this method reports: its EMA teacher where it has one."""
        return "teacher" if self.pseudo_labels == "ema_teacher" else "student"


METHODS: dict[str, MethodSpec] = {
    "supervised": MethodSpec("none", 1, "none", False, False, None, "labelled images only"),
    "mean_teacher": MethodSpec("ema_teacher", 1, "none", False, False, semi_step,
                               "DDFP's step without flow and perturbation"),
    "fixmatch": MethodSpec("self", FIXMATCH.views, "none", False, False, partial(weak_strong_step, weights=FIXMATCH),
                           "LiheYoung/UniMatch fixmatch.py", released_weights=True),
    "unimatch": MethodSpec("self", UNIMATCH.views, "backbone_dropout", False, False, partial(weak_strong_step, weights=UNIMATCH),
                           "LiheYoung/UniMatch unimatch.py", released_weights=True),
    "ddfp": MethodSpec("ema_teacher", 1, "offset", True, True, semi_step, "Gavinwxy/DDFP"),
}
if set(METHODS) != set(get_args(Method)):
    raise ImportError(f"ddfp.config.Method {get_args(Method)} and the method table {tuple(METHODS)} differ")


def method_spec(cfg: MethodConfig) -> MethodSpec:
    return METHODS[cfg.train.method]


def unread_keys(spec: MethodSpec) -> frozenset[str]:
    """The config sections and dotted keys a method's training and scoring never read, so that a run
    of it is the same run whatever they hold (a resume, a record, a sweep's fingerprint and the
    tracking identity ignore them): the teacher's keys without an EMA teacher, the flow's without a
    flow, the perturbation's without DDFP's shift, the semi-supervised schedule and losses without
    a semi-supervised phase."""
    keys: set[str] = set()
    if spec.pseudo_labels != "ema_teacher":
        keys |= {"teacher", "eval.model"}
    if not spec.fits_flow:
        keys |= {"flow", "train.flow_start_epoch"}
    if spec.perturbation != "offset":
        keys |= {"perturb", "train.perturb_start_epoch", "loss.unsup", "loss.perturb"}
    if spec.released_weights:
        keys |= {"loss.warmup_unsup", "train.cutmix_prob"}
    if not spec.semi:
        keys |= {"loss.warmup_unsup", "train.cutmix_prob", "train.conf_thresh", "train.sup_only_epochs"}
    return frozenset(keys)


def phase_at(epoch: int, cfg: MethodConfig) -> Phase:
    """What an iteration of `epoch` does: supervised before train.sup_only_epochs; then the method's
    semi-supervised step, with the flow fitted from flow_start_epoch and the perturbation from
    perturb_start_epoch where the method has them."""
    spec, t = method_spec(cfg), cfg.train
    semi = spec.semi and epoch >= t.sup_only_epochs
    return Phase(semi=semi, fit_flow=spec.fits_flow and epoch >= t.flow_start_epoch,
                 perturb=spec.perturbation == "offset" and epoch >= t.perturb_start_epoch,
                 aux_bn=spec.aux_bn, ema_teacher=spec.pseudo_labels == "ema_teacher")


def train_step(models: Models, batch: Batch, phase: Phase, cfg: MethodConfig, diagnostics: bool = True) -> StepOutput:
    """Losses and diagnostics of one iteration (the student must be in train mode).

    diagnostics=False skips the density and perturbation diagnostics (extra flow passes, and a
    classifier pass in the flow's warm-up): the trainer asks for them only on the iterations it logs.
    """
    step = method_spec(cfg).step
    if not phase.semi or step is None:
        return supervised_step(models.student, batch, phase, cfg)
    return step(models, batch, phase, cfg, diagnostics)


def reported_model(cfg: MethodConfig, evaluated: Collection[str] = ("student", "teacher")) -> Literal["teacher", "student"]:
    """eval.model where the method has that network and it was evaluated, else the student: a method
    without an EMA teacher reports the network it trains, and a teacher's run evaluates none before
    its teacher trains."""
    if method_spec(cfg).reported == "student" or cfg.eval.model not in evaluated:
        return "student"
    return cfg.eval.model


__all__ = ["METHODS", "MethodSpec", "method_spec", "phase_at", "reported_model", "train_step", "unread_keys"]
