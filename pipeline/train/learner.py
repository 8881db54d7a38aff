"""The learning part of a training run: the models, AMP, the two optimisers and their schedules, the
teacher update and one training iteration around ddfp.methods.train_step.

It knows no data, files or counters: pipeline.train.trainer.Trainer feeds it a split's batches and the
loop's iteration number; the step benchmark (pipeline.evidence.bench) feeds it random batches.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.profiler import record_function

from ddfp.flow.density import DensityEstimator
from ddfp.model.deeplab import build_model
from ddfp.schedule import poly_lr
from ddfp.methods import train_step
from ddfp.step import Batch, Models, Phase, StepOutput
from ddfp.teacher import ema_decay, hand_off, make_teacher, update_teacher
from pipeline.params import Config
from pipeline.train import distributed
from pipeline.train.distributed import SINGLE, DistEnv


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA where supported, fp16 on older GPUs, fp32 (no autocast) on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def _mean_output(outs: list[StepOutput]) -> StepOutput:
    """The micro-batches' mean losses and logs (a diagnostic only the last one computed is its own)."""
    if len(outs) == 1:
        return outs[0]
    mean = lambda xs: torch.stack(xs).mean()  # noqa: E731
    keys = dict.fromkeys(k for o in outs for k in o.logs)
    logs = {k: mean([o.logs[k] for o in outs if k in o.logs]) for k in keys}
    flow = None if outs[0].flow_loss is None else mean([o.flow_loss for o in outs])
    return StepOutput(mean([o.seg_loss for o in outs]), flow, logs)


def _snapshot(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
    # One fused copy per dtype group on GPU, and no host sync: this runs every iteration.
    return torch._foreach_mul(buffers, 1) if buffers else []


@torch.no_grad()
def _restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    if buffers:
        torch._foreach_copy_(buffers, saved)


@dataclass(frozen=True)
class StepResult:
    """One iteration's logs (tensors: no host sync) and which updates it skipped (a non-finite value)."""

    logs: dict[str, torch.Tensor]
    seg_skipped: bool
    flow_skipped: bool


class Learner:
    """The models, AMP, the two optimisers and one training iteration: no data, files or counters.

    iters_per_epoch sets the schedules: the LR's poly decay and the first semi-supervised iteration.
    """

    def __init__(self, cfg: Config, device: torch.device, iters_per_epoch: int, dist: DistEnv = SINGLE,
                 weights: Path | None = None) -> None:
        self.cfg, self.device, self.dist, self.iters_per_epoch = cfg, device, dist, iters_per_epoch
        seed_everything(cfg.train.seed)
        # The library is handed tensors, never paths: the ImageNet file is read here.
        state = torch.load(weights, map_location="cpu", weights_only=True) if weights else None
        # NHWC convolutions where run.channels_last asks (the teacher is copied from this layout).
        self.memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
        model = build_model(cfg.model, cfg.spec.num_classes, state).to(device, memory_format=self.memory_format)
        student = distributed.prepare_student(model, dist, device)
        flow = DensityEstimator(cfg.flow, cfg.model.head_channels, cfg.spec.num_classes).to(device)
        distributed.broadcast_module(flow, dist)
        self.models = Models(student, make_teacher(student).to(device), flow)
        t = cfg.train
        # Fused kernels (one pass over all parameters) where torch has them: the same update in half
        # the time of the per-tensor loops (SGD: bit-identical; Adam: within an ulp).
        fused = True if device.type in ("cpu", "cuda") else None
        self.opt_seg = torch.optim.SGD(student.param_groups(t.lr, cfg.head_lr_mult), lr=t.lr, momentum=t.momentum,
                                       weight_decay=t.weight_decay, fused=fused)
        self.opt_flow = torch.optim.Adam(self.models.flow.parameters(), lr=cfg.flow.lr, betas=cfg.flow.betas,
                                         fused=fused)
        self.dtype = amp_dtype(t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.total_iters = t.epochs * iters_per_epoch  # the LR schedule's length
        self.first_semi_iter = t.sup_only_epochs * iters_per_epoch

    def parts(self) -> dict[str, Any]:
        """What a checkpoint holds of the learner, by checkpoint key: each has state_dict/load_state_dict."""
        m = self.models
        return {"student": m.student, "teacher": m.teacher, "flow": m.flow, "opt_seg": self.opt_seg,
                "opt_flow": self.opt_flow, "scaler": self.scaler}

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch on the device, in the models' memory format."""
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The configured mixed precision (train.precision) for a forward pass, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def run_iteration(self, batch: Batch | Sequence[Batch], phase: Phase, iteration: int,
                      diagnostics: bool = True) -> StepResult:
        """Iteration number `iteration` (0-based): the LR of its place in the schedule, one update.

        A sequence of batches is one step over their micro-batches (gradient accumulation): each
        one's losses count 1/n, its graph is freed after its backward, the update happens once."""
        batches = [batch] if isinstance(batch, Batch) else list(batch)
        t = self.cfg.train
        for group in self.opt_seg.param_groups:
            group["lr"] = poly_lr(group["base_lr"], iteration, self.total_iters, t.poly_power)
        self.models.student.train()
        if phase.semi and phase.ema_teacher and iteration == self.first_semi_iter:
            # Before the snapshot: a skipped first step keeps the handed-off teacher.
            hand_off(self.models.teacher, self.models.student)
        buffers = self._forward_buffers()
        saved = _snapshot(buffers)
        self.opt_seg.zero_grad(set_to_none=True)
        self.opt_flow.zero_grad(set_to_none=True)
        outs = [self._forward_backward(b, phase, diagnostics and i == len(batches) - 1, len(batches))
                for i, b in enumerate(batches)]
        with record_function("learner.update"):
            return self._update(_mean_output(outs), phase, iteration, buffers, saved)

    def _forward_backward(self, batch: Batch, phase: Phase, diagnostics: bool, n: int) -> StepOutput:
        """One micro-batch's losses, backpropagated at 1/n of their weight; returned detached."""
        with self.autocast():
            out = train_step(self.models, batch, phase, self.cfg, diagnostics)
        with record_function("learner.backward"):
            self.scaler.scale(out.seg_loss / n if n > 1 else out.seg_loss).backward()
            if out.flow_loss is not None:
                (out.flow_loss / n if n > 1 else out.flow_loss).backward()
        flow = None if out.flow_loss is None else out.flow_loss.detach()
        return StepOutput(out.seg_loss.detach(), flow, out.logs)

    def _update(self, out: StepOutput, phase: Phase, iteration: int, buffers: list[torch.Tensor],
                saved: list[torch.Tensor]) -> StepResult:
        """The gradient sync, the finite check and every update it allows (`out`: detached losses)."""
        # A non-finite BN statistic is as poisonous as a non-finite loss (the EMA would carry it into
        # the teacher), so its norm joins the loss in the one finite check below.
        stats = torch.nn.utils.get_total_norm([b for b in buffers if b.is_floating_point()])
        checks = [out.seg_loss.float(), stats.float()]
        if out.flow_loss is not None:
            checks.append(out.flow_loss.float())
        # Gradient sync point (several ranks): the mean gradient and mean losses, before clipping and
        # before the finite check, so every rank clips, checks and steps identically.
        synced = list(self.models.student.parameters())
        if out.flow_loss is not None:
            synced += list(self.models.flow.parameters())
        checks = distributed.average_gradients(self.dist, synced, checks)
        loss = checks[0]
        if out.flow_loss is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(self.models.flow.parameters(), self.cfg.flow.grad_clip)
            checks[2] = checks[2] + gnorm
        # The one host sync of an iteration: skip any update whose loss (or flow gradient) is not finite.
        finite = torch.isfinite(torch.stack(checks)).tolist()
        seg_ok, flow_ok = finite[0] and finite[1], out.flow_loss is None or finite[2]
        if seg_ok:
            self.scaler.step(self.opt_seg)
            self.scaler.update()
            if phase.semi and phase.ema_teacher:
                decay = ema_decay(iteration, self.first_semi_iter, self.cfg.teacher.ema_decay)
                update_teacher(self.models.teacher, self.models.student, decay, self.cfg.teacher.mode)
        else:
            _restore(buffers, saved)  # the skipped batch leaves no trace in any BN statistic
        if out.flow_loss is not None and flow_ok:
            self.opt_flow.step()
        return StepResult({"loss": loss, **out.logs}, not seg_ok, not flow_ok)

    def _forward_buffers(self) -> list[torch.Tensor]:
        """The buffers a training forward writes: the student's BN statistics and counters, and the
        teacher's when it pseudo-labels in train mode."""
        models = [self.models.student]
        if self.cfg.teacher.pseudo_label_mode == "train":
            models.append(self.models.teacher)
        return [b for m in models for b in m.buffers()]


__all__ = ["Learner", "StepResult", "amp_dtype", "seed_everything"]
