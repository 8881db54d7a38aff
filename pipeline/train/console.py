"""What a training prints while it runs: tqdm's bar on a terminal; elsewhere (a SLURM job log, CI,
`dvc repro > file`) one plain line per logged iteration, since a file keeps every carriage-return
redraw of a bar and shows nothing readable between evaluations."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm


PROGRESS = "progress.json"  # in the run directory: the last progress line as JSON, for `ddfp status`


def duration(seconds: float | None) -> str:
    """1h05m, 3m07s; ? when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Rate:
    """Iterations per second of this process since `initial` (not of a resumed run's earlier ones)."""

    def __init__(self, initial: int) -> None:
        self._t0, self._n0 = time.monotonic(), initial

    def per_s(self, n: int) -> float:
        elapsed = time.monotonic() - self._t0
        return (n - self._n0) / elapsed if elapsed > 0 else 0.0

    def eta_s(self, n: int, total: int) -> float | None:
        rate = self.per_s(n)
        return (total - n) / rate if rate > 0 else None


class PlainProgress:
    """The part of tqdm's interface the loop uses; `set_postfix` (called at each logged iteration)
    prints `<desc>: iteration i/total (p%), loss ..., x it/s, ETA ...`."""

    def __init__(self, total: int, initial: int, desc: str, stream: IO[str]) -> None:
        self.total, self.n, self.desc, self.stream = total, initial, desc, stream
        self.rate = Rate(initial)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict[str, str]) -> None:
        eta = self.rate.eta_s(self.n, self.total)
        fields = "".join(f", {k} {v}" for k, v in values.items())
        print(f"{self.desc}: iteration {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%){fields}, "
              f"{self.rate.per_s(self.n):.2f} it/s, ETA {duration(eta)}", file=self.stream, flush=True)


def progress_bar(total: int, initial: int, desc: str, enabled: bool,
                 stream: IO[str] | None = None) -> tqdm | PlainProgress:
    """A bar where a person watches a terminal, plain lines where the output goes to a file."""
    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        return PlainProgress(total, initial, desc, stream)
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, file=stream)


__all__ = ["PROGRESS", "PlainProgress", "Rate", "duration", "progress_bar"]
