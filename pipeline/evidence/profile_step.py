"""Where a training step's time goes: torch.profiler events charged to the step's named ranges.

ddfp.step runs its parts in `record_function` ranges (`ddfp.teacher`, `ddfp.encode`, `ddfp.search`,
`ddfp.classify`, `ddfp.loss`, `ddfp.flow_fit`) and the Learner its own (`learner.backward`,
`learner.update`). Every profiled op's self time goes to one bucket:
- a backward op to `<range> backward`, the range of the forward op that recorded its autograd node
  (the profiler gives both the same sequence number), so the backward of the perturbed rows is charged
  to `ddfp.classify` and the flow's to `ddfp.flow_fit`, wherever the backward ran;
- any other op to the innermost named range around it, else `optimizers` (torch's own
  `Optimizer.step#...` ranges) or `other`.
The self times of a step add up to its profiled time, so the buckets are a breakdown, not samples.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

RANGES = ("ddfp.", "learner.")
BACKWARD = "autograd::engine::evaluate_function: "


def _named_range(e: FunctionEvent | None) -> str | None:
    while e is not None:
        if e.name.startswith(RANGES):
            return e.name
        e = e.cpu_parent
    return None


def _in_backward(e: FunctionEvent | None) -> bool:
    """Run by the autograd engine (its node events carry the forward op's number too)."""
    while e is not None:
        if e.name.startswith(BACKWARD):
            return True
        e = e.cpu_parent
    return False


def _bucket(e: FunctionEvent, forward_range: dict[int, str]) -> str:
    a: FunctionEvent | None = e
    while a is not None:
        if a.name.startswith(BACKWARD):
            # Gradient accumulation into .grad belongs to no forward op.
            return f"{forward_range.get(a.sequence_nr, 'accumulate grad')} backward"
        if a.name.startswith(RANGES):
            return a.name
        if a.cpu_parent is None and a.name.startswith("Optimizer."):
            return "optimizers"
        a = a.cpu_parent
    return "other"


def attribute(events: list[FunctionEvent], time: Callable[[FunctionEvent], float]) -> dict[str, float]:
    """Self time (in the profiler's microseconds) per bucket, over every event."""
    # Every op run with grad enabled records the sequence number the next autograd node will take;
    # the op that takes it is the last of them to start (later ops record the next number).
    forward_range: dict[int, str] = {}
    for e in sorted(events, key=lambda e: e.time_range.start):
        if e.sequence_nr >= 0 and not _in_backward(e):
            forward_range[e.sequence_nr] = _named_range(e) or "other"
    out: dict[str, float] = defaultdict(float)
    for e in events:  # a range's own self time (Python between its ops) stays in the range
        out[_bucket(e, forward_range)] += time(e)
    return dict(out)


def profile_steps(steps: dict[str, Callable[[], Any]], iterations: int, device: torch.device) -> dict[str, Any]:
    """Per step: milliseconds per iteration in each bucket (CPU time; device time too on CUDA), the
    difference of every step from the first, and the ops that make the last step's difference."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    clocks: dict[str, Callable[[FunctionEvent], float]] = {"cpu_ms": lambda e: e.self_cpu_time_total}
    if cuda:
        clocks["device_ms"] = lambda e: e.self_device_time_total
    result: dict[str, Any] = {}
    ops: dict[str, dict[str, float]] = {}
    for name, step in steps.items():
        step()  # warm-up outside the profile
        with profile(activities=activities) as prof:
            for _ in range(iterations):
                step()
            if cuda:
                torch.cuda.synchronize(device)
        events = prof.events()
        result[name] = {clock: _per_iteration(attribute(events, fn), iterations) for clock, fn in clocks.items()}
        ops[name] = {e.key: e.self_cpu_time_total / iterations / 1e3 for e in prof.key_averages()}
    names = list(steps)
    base, last = names[0], names[-1]
    for name in names[1:]:
        for clock in clocks:
            result[name][f"{clock}_over_{base}"] = _difference(result[name][clock], result[base][clock])
    top = _difference(ops[last], ops[base])
    result[f"top_ops_{last}_over_{base}_cpu_ms"] = dict(list(top.items())[:12])
    return result


def _per_iteration(buckets: dict[str, float], iterations: int) -> dict[str, float]:
    ms = {k: round(v / iterations / 1e3, 2) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])}
    return {"total": round(sum(ms.values()), 1), **ms}


def _difference(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """a - b per key (absent = 0), largest first, without the near-zero ones."""
    diff = {k: round(a.get(k, 0.0) - b.get(k, 0.0), 2) for k in set(a) | set(b)}
    return {k: v for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1])) if abs(v) >= 0.05}


__all__ = ["attribute", "profile_steps"]
