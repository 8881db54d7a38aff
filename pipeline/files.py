"""The one atomic write: a unique temporary file beside the target, fsync, then rename.

Every file the pipeline publishes (checkpoints, JSON outputs, reports, figures, params.yaml) goes
through `atomic_write`, so a reader never sees half a file, a kill never leaves one, and two writers
never share a temporary name (each gets its own from mkstemp; the last rename wins whole).
`atomic_directory` does the same for a whole folder (a generated dataset, the split lists).
A full disk keeps the previous file intact, removes the partial temporary and raises a DataError
naming the target.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from pipeline.errors import DataError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(err: BaseException) -> bool:
    # Libraries that write through the file object (torch.save, PIL) may wrap its OSError in their
    # own exception, e.g. torch's "enforce fail at inline_container.cc"; the OSError is its context.
    for cause in (err, err.__context__):
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            return True
    return False


def _full_disk(path: Path, existed: bool) -> DataError:
    kept = f"the previous {path.name} is kept" if existed else "nothing was written"
    return DataError(f"{path}: no space left on the device; {kept}")


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Yield an open temporary file; on success it replaces `path`, on any error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp's 0600 would survive the rename: give the file what open() would (0666 - umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _no_space(err):
            raise _full_disk(path, path.exists()) from None
        raise


@contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to dest; on success it replaces dest, on error it vanishes.

    The temporary folder is a sibling, so the final renames stay on one file system and dest is
    never seen half-written.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would survive the rename, as in atomic_write
        yield tmp
        _swap_into_place(tmp, dest)
    except BaseException as err:
        if _no_space(err):
            raise _full_disk(dest, dest.exists()) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful swap


def _swap_into_place(new: Path, dest: Path) -> None:
    # A non-empty folder cannot be renamed over, so the old one is moved aside first and put back if
    # the second rename fails.
    if not dest.exists():
        os.replace(new, dest)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    aside = trash / dest.name
    os.replace(dest, aside)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(aside, dest)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


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


__all__ = ["atomic_directory", "atomic_write", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
