"""Which ops of a computation read values of its inputs back to the host.

On a GPU each such read (`.item()`, `bool(t)`, `nonzero`, boolean-mask indexing, `unique`, ...) waits for
every queued kernel: the step then stops feeding the device. These tests have no GPU, so the reads
are found where they start, at the dispatcher: every tensor derived from the watched inputs (models,
batch) is tracked, and a reading op on a tracked tensor is recorded. Reads of tensors made on the host
from a CPU generator (CutMix's coin flip) are not device reads and are not recorded. `.tolist()` and
`.cpu()` do not pass the dispatcher on a CPU tensor; the GPU test (`torch.cuda.set_sync_debug_mode`)
covers them where a device exists.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
         aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default, aten.equal.default,
         aten.is_nonzero.default, aten.repeat_interleave.Tensor}
MASK_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class HostReads(TorchDispatchMode):
    """Records (op name) for every op that reads a tracked tensor's values on the host."""

    def __init__(self, watched: list[torch.Tensor]) -> None:
        super().__init__()
        self.tracked = WeakTensorKeyDictionary()
        for t in watched:
            self.tracked[t] = True
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs))
        derived = any(t in self.tracked for t in inputs)
        if derived and (func in READS or (func in MASK_INDEXED and _bool_index(args))):
            self.reads.append(str(func))
        out = func(*args, **kwargs)
        if derived:
            for t in _tensors(out):
                self.tracked[t] = True
        return out


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])
