"""Atomic checkpoints holding every piece of state an exact resume needs, and the one before.

Loaded with torch.load(weights_only=True): only tensors, containers and primitives are stored (the
NumPy RNG state is converted to a tensor), so a checkpoint cannot execute code; a file that asks to
(tampering) is refused, naming what it asks for. Each save keeps the checkpoint it replaces as
`last.prev.pt`, so a `last.pt` damaged afterwards (a disk error, a cut copy) costs one interval.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.errors import DataError
from pipeline.files import atomic_write

# What Trainer.state_dict writes and a resume or an evaluation reads.
KEYS = ("config", "done", "student", "teacher", "flow", "opt_seg", "opt_flow", "scaler", "rng", "epoch",
        "iter_in_epoch", "iteration", "skipped", "history", "evals")


class UntrustedCheckpoint(DataError):
    """A checkpoint asking to import code: tampering, not damage, so it is never skipped over."""


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def previous(path: Path) -> Path:
    """Where save_atomic keeps the checkpoint it replaced (last.pt -> last.prev.pt)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _link_over(src: Path, dst: Path) -> None:
    """Make dst the file src is, by one rename so dst never goes missing; a hard link, not a copy."""
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links pays a copy
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)  # still there if dst already was src: rename() then does nothing


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Keep the current checkpoint as the previous one, then write through a unique temporary file:
    a kill never leaves a torn file, two writers never share a name, a full disk keeps last.pt."""
    if path.exists():
        _link_over(path, previous(path))
    with atomic_write(path) as fh:
        torch.save(state, fh)


class _Import(Exception):
    """The first function or class a pickle asks for (never imported)."""


class _ImportRecorder(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise _Import(f"{module}.{name}")


ZIP_MAGIC = b"PK\x03\x04"  # how every torch.save file (a zip archive) starts


def _code_asked_for(path: Path) -> str | None:
    """The code a checkpoint refused by weights_only asks to import, or None (it is merely damaged)."""
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: torch knows which imports are plain data
            return ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or None
        with open(path, "rb") as fh:  # a bare pickle: no import is plain data
            _ImportRecorder(fh).load()
    except _Import as asked:
        return str(asked)
    except Exception:  # not readable as a pickle at all
        return None
    return None


def _damage(err: Exception, path: Path) -> str:
    if isinstance(err, EOFError):
        return "empty or cut short"
    # Outside a zip archive torch's reader is a bare unpickler, and bytes that are no pickle stop
    # it with whatever error the first bad opcode meets (IndexError, KeyError, ...): the one useful
    # fact is then that the file is not a checkpoint. A damaged archive keeps its own reason.
    with open(path, "rb") as fh:
        if fh.read(4) != ZIP_MAGIC:
            return "not a torch checkpoint"
    return f"damaged: {str(err).strip().split('. ')[0] or type(err).__name__}"


def load(path: Path, device: torch.device | str = "cpu", keys: tuple[str, ...] = KEYS,
         kind: str = "training checkpoint") -> dict[str, Any]:
    """The checkpoint at path holding `keys`, or a DataError naming the file and why it cannot be used."""
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a damaged file fails anywhere in torch's readers, with many types
        asked = _code_asked_for(path) if isinstance(err, pickle.UnpicklingError) else None
        if asked:
            raise UntrustedCheckpoint(f"{path}: refused: not a plain checkpoint "
                                      f"(it asks to run code: {asked})") from None
        raise DataError(f"{path}: cannot load it ({_damage(err, path)})") from None
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys) or ["a mapping"]
    if missing:
        raise DataError(f"{path}: cannot load it (not a {kind}: missing {', '.join(missing)})")
    return state


def load_resumable(path: Path) -> tuple[dict[str, Any] | None, Path]:
    """The run's newest checkpoint that loads and where it came from: path, else the previous one.

    A damaged file is passed over with one line saying why; a tampered one stops the run
    (UntrustedCheckpoint). (None, path) when there is none: train from scratch.
    """
    if not path.exists():
        return None, path
    try:
        return load(path), path
    except UntrustedCheckpoint:
        raise
    except DataError as err:
        damaged = err
    prev = previous(path)
    try:
        state = load(prev)
    except UntrustedCheckpoint:
        raise
    except DataError:
        tqdm.write(f"{damaged}; no previous checkpoint loads, training from scratch")
        return None, path
    tqdm.write(f"{damaged}; falling back to {prev}")
    _link_over(prev, path)  # so the next save keeps a good previous checkpoint, not the damaged one
    return state, prev
