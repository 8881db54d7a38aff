"""torch.distributed for training: set-up from SLURM (submitit) or torchrun, and the collectives
the trainer and the evaluation need. Without either environment everything is a single process and
every function here is a no-op.

Backends: gloo on CPU, nccl on GPU (one process per GPU, device cuda:LOCAL_RANK).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

BUCKET_NUMEL = 2**24  # 64 MiB of fp32 per all_reduce: few calls, bounded extra memory


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # single | torchrun | slurm

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """run.device resolved for this process: CUDA ranks use cuda:LOCAL_RANK."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
        return device


SINGLE = DistEnv()


def env_from(environ: Mapping[str, str]) -> DistEnv:
    """torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK) -> DistEnv; none -> single process."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return SINGLE
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise ValueError(f"torch.distributed environment: {err}") from None
    if not 0 <= rank < world or local < 0:
        raise ValueError(f"torch.distributed environment: RANK={rank} not in [0, WORLD_SIZE={world})")
    source = "slurm" if environ.get("SUBMITIT_EXECUTOR") == "slurm" else "torchrun"
    return DistEnv(rank, world, local, source)


def in_submitit_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def init(device_name: str = "auto") -> DistEnv:
    """Join the process group this process was launched into (SLURM job or torchrun), if any.

    In a submitit job the torch variables are derived from SLURM's (MASTER_PORT from the job id,
    so no fixed port); CUDA_VISIBLE_DEVICES is left alone and each rank picks cuda:LOCAL_RANK.
    """
    if in_submitit_job():
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    env = env_from(os.environ)
    device = env.device(device_name)
    # A launched GPU run always joins (nccl, SyncBN even on one GPU); one CPU process needs no group.
    if dist.is_initialized() or not (env.distributed or (env.source != "single" and device.type == "cuda")):
        return env
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            rank=env.rank, world_size=env.world_size,
                            **({"device_id": device} if device.type == "cuda" else {}))
    return env


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def prepare_student(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """SyncBatchNorm only across GPUs (on CPU, gloo has no SyncBN kernels and ranks keep their own
    batch statistics); then rank 0's weights everywhere, so ranks start identical even if a
    pretrained file or an RNG differed."""
    if dist.is_initialized() and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    broadcast_module(model, env)
    return model


def broadcast_module(module: nn.Module, env: DistEnv) -> None:
    if not env.distributed:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


def broadcast_buffers(module: nn.Module, env: DistEnv) -> None:
    """Rank 0's BatchNorm running statistics everywhere. Without SyncBN (CPU) each rank normalises
    with its own batch, so the running averages drift apart (parameters never do); like DDP's
    broadcast_buffers, rank 0's are the model's: the ones it saves and every shard evaluates with."""
    if not env.distributed:
        return
    with torch.no_grad():
        for t in module.buffers():
            dist.broadcast(t, src=0)


def _buckets(tensors: Sequence[torch.Tensor], numel: int) -> list[list[torch.Tensor]]:
    out: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if out[-1] and (size + t.numel() > numel or t.dtype != out[-1][0].dtype):
            out.append([])
            size = 0
        out[-1].append(t)
        size += t.numel()
    return [b for b in out if b]


def average_gradients(env: DistEnv, params: Iterable[nn.Parameter], scalars: list[torch.Tensor],
                      bucket_numel: int = BUCKET_NUMEL) -> list[torch.Tensor]:
    """Average the gradients of `params` and the `scalars` (losses) over ranks, in place.

    Why not DistributedDataParallel: the step calls the classifier several times (clean, perturbed,
    the perturbation search) and the dual BN's aux branch is unused in some phases, so DDP would need
    find_unused_parameters and static-graph workarounds, and its hooks fire once per backward while the
    flow has its own backward. Averaging after both backwards gives exactly the gradient of the mean
    of the ranks' losses, which is what DDP computes, in a few bucketed all_reduce calls.

    A parameter without a gradient on some rank counts as zero there; one without a gradient on every
    rank keeps grad None, so the optimiser skips it exactly as in one process (weight decay and
    momentum included). The scalars ride in the last bucket: afterwards every rank holds the same
    averaged losses and gradients, so the trainer's finite check (and GradScaler's inf check) agree
    across ranks and no rank steps while another skips.
    """
    if not env.distributed:
        return scalars
    params = [p for p in params if p.requires_grad]
    if not params:
        return scalars
    device = params[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    extra = torch.cat([has, torch.stack([s.detach().float().reshape(()) for s in scalars])]) if scalars else has
    buckets = _buckets(grads, bucket_numel) + [[extra]]
    flats = [torch.cat([g.reshape(-1) for g in b]) for b in buckets]
    works = [dist.all_reduce(f, async_op=True) for f in flats]
    for w in works:
        w.wait()
    for b, flat in zip(buckets[:-1], flats[:-1]):
        flat.div_(env.world_size)
        offset = 0
        for g in b:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    present = flats[-1][: len(params)]
    for p, g, n in zip(params, grads, present.tolist()):
        p.grad = g if n > 0 else None
    return list((flats[-1][len(params):] / env.world_size).unbind()) if scalars else scalars


def agree(env: DistEnv, flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any rank (one tiny all_reduce)."""
    if not env.distributed:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (confusion matrices: integer counts, so the sum is exact)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """Indices of a list of n items for one rank: every item on exactly one rank, no padding."""
    return list(range(rank, n, world_size))


def digest(module: nn.Module) -> str:
    """sha1 of the parameters: equal across ranks iff their weights are bit-identical."""
    h = hashlib.sha1()
    for name, t in module.named_parameters():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
