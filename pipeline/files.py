"""The one atomic write: a unique temporary file beside the target, fsync, then rename.

Every file the pipeline publishes (checkpoints, JSON outputs, reports, figures, params.yaml) goes
through `atomic_write`, so a reader never sees half a file, a kill never leaves one, and two writers
never share a temporary name (each gets its own from mkstemp; the last rename wins whole).
A full disk keeps the previous file intact, removes the partial temporary and raises a DataError
naming the target.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from pipeline.errors import DataError


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Yield an open temporary file; on success it replaces `path`, on any error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"{path}: no space left on the device; the previous {path.name} is kept") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_json_atomic(obj: Any, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


__all__ = ["atomic_write", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
