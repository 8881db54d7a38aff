"""Mean teacher: a real exponential moving average of the student, sharing no storage with it.

The authors' hand-off sets teacher `param.data = student param.data`, which aliases the tensors, so
their later EMA writes are no-ops. `mode: ema` is the paper's intent;
`mode: student_bn` reproduces the released behaviour (teacher weights == student weights, own BN
statistics) by copying, never by aliasing.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy with its own storage and no gradients."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def hand_off(teacher: nn.Module, student: nn.Module) -> None:
    """teacher := student, parameters and every buffer (BN statistics and counters), by copying.

    Called before the first semi-supervised iteration: its pseudo-labels must come from the network
    the supervised epochs trained, not from the initial one the teacher was copied from.
    """
    torch._foreach_copy_(list(teacher.parameters()), list(student.parameters()))
    torch._foreach_copy_(list(teacher.buffers()), list(student.buffers()))


def ema_decay(iteration: int, start_iteration: int, cap: float) -> float:
    """min(1 - 1/(t - T0 + 1), cap): 0 at the hand-off (teacher := student), then rising to cap."""
    return min(1.0 - 1.0 / (iteration - start_iteration + 1), cap)


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, decay: float, mode: str) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, for parameters and float buffers.

    BN running statistics are averaged too: the teacher predicts in eval mode, so its statistics
    must follow the student's (the authors average parameters only and use train-mode BN).
    In student_bn mode parameters are copied (decay 0) and buffers stay the teacher's own.
    """
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if mode == "student_bn":
        torch._foreach_copy_(t_params, s_params)
        return
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    t_bufs = [b for b in teacher.buffers() if b.is_floating_point()]
    s_bufs = [b for b in student.buffers() if b.is_floating_point()]
    if t_bufs:
        torch._foreach_lerp_(t_bufs, s_bufs, 1.0 - decay)
