"""What a training prints while it runs: tqdm's bar on a terminal; elsewhere (a SLURM job log, CI,
`dvc repro > file`) one plain line per logged iteration, since a file keeps every carriage-return
redraw of a bar and shows nothing readable between evaluations."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class PlainProgress:
    """The part of tqdm's interface the loop uses; `set_postfix` (called at each logged iteration)
    prints `<desc>: iteration i/total (p%), loss ..., x it/s, ETA ...`."""

    def __init__(self, total: int, initial: int, desc: str, stream: IO[str]) -> None:
        self.total, self.n, self.desc, self.stream = total, initial, desc, stream
        self._t0, self._n0 = time.monotonic(), initial  # the rate of this process, not of a resumed run

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict[str, str]) -> None:
        elapsed = time.monotonic() - self._t0
        rate = (self.n - self._n0) / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.n) / rate) if rate > 0 else "?"
        fields = "".join(f", {k} {v}" for k, v in values.items())
        print(f"{self.desc}: iteration {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%){fields}, "
              f"{rate:.2f} it/s, ETA {eta}", file=self.stream, flush=True)


def progress_bar(total: int, initial: int, desc: str, enabled: bool,
                 stream: IO[str] | None = None) -> tqdm | PlainProgress:
    """A bar where a person watches a terminal, plain lines where the output goes to a file."""
    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        return PlainProgress(total, initial, desc, stream)
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, file=stream)


__all__ = ["PlainProgress", "progress_bar"]
