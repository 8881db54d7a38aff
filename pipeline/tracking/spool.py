"""What a tracker could not send: an append-only JSON-lines spool in the run directory.

Each entry is one tracking call (create a run, its params, metrics, tags, an artifact, the end status)
written with a single O_APPEND write, so a killed process loses at most the line being written (a
torn last line is skipped on reading). Artifacts are copied beside the spool, because the files a
run logs often live in temporary directories. Without a run directory (sweeps) the spool is memory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.files import write_text_atomic

SPOOL_NAME = "tracking_pending.jsonl"


class Spool:
    def __init__(self, run_dir: Path | None) -> None:
        self.path = run_dir / SPOOL_NAME if run_dir is not None else None
        self._memory: list[dict[str, Any]] = []
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Cut a killed writer's partial last line, so that the next entry starts a line of its own."""
        if self.path is None or not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def __len__(self) -> int:
        return len(self.read())

    def __str__(self) -> str:
        return str(self.path) if self.path else "memory"

    def append(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            self._memory.append(entry)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        if self.path is None:
            return list(self._memory)
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the torn last line of a writer killed while this process reads
        return entries

    def has(self, op: str) -> bool:
        return any(e["op"] == op for e in self.read())

    def keep_file(self, src: Path) -> Path:
        """A copy of an artifact that outlives its (often temporary) directory, under its own name."""
        if self.path is None:
            return src
        folder = self.path.with_suffix("") / f"{len(list(self.path.with_suffix('').glob('*'))):05d}"
        folder.mkdir(parents=True, exist_ok=True)
        if src.is_dir():  # a logged model's folder
            return Path(shutil.copytree(src, folder / src.name))
        return Path(shutil.copy2(src, folder / src.name))

    def replace(self, entries: list[dict[str, Any]]) -> None:
        """Keep only `entries` (what is still unsent); none left removes the spool and its copies."""
        if self.path is None:
            self._memory = list(entries)
            return
        if entries:
            write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in entries))
            return
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.path.with_suffix(""), ignore_errors=True)


__all__ = ["SPOOL_NAME", "Spool"]
