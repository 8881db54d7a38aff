"""GPU check of `fit` (device cuda:LOCAL_RANK, nccl, autocast, SyncBN): a few iterations of the pascal
profile (ResNet-101, random init) on the generated dataset, printed as one JSON line.

    torchrun --nproc_per_node=1 benchmarks/gpu_check.py --iters 5      # on a GPU machine
    python benchmarks/gpu_check.py --cpu --iters 2                     # plumbing check on CPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pipeline import params
from pipeline.stages.splits import run_splits
from pipeline.stages.synthetic import write_synthetic
from pipeline.train import distributed
from pipeline.train.fit import fit
from pipeline.train.learner import amp_dtype
from pipeline.train.trainer import RunPaths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--cpu", action="store_true", help="small crop on CPU (no GPU needed)")
    ap.add_argument("--crop", type=int, help="default: 321 on GPU, 64 on CPU")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (use --cpu for a CPU plumbing check)")
    crop = args.crop or (64 if args.cpu else 321)
    cfg = params.load(None, "pascal", {
        "data.dataset": "synthetic", "data.splits": ["16"], "data.crop_size": crop, "run.num_workers": 2,
        "synthetic.num_train": 64, "synthetic.num_val": 4, "synthetic.image_size": crop + crop // 4,
        "model.pretrained": False, "train.max_iters": args.iters, "run.device": "cpu" if args.cpu else "cuda",
        "train.batch_size": 2 if args.cpu else 4, "tracking.enabled": False, "run.log_every": 1,
        # every phase in the few iterations: supervised, flow fit and perturbation all from epoch 0
        "train.sup_only_epochs": 0, "train.flow_start_epoch": 0, "train.perturb_start_epoch": 0,
    })
    env = distributed.init(cfg.run.device)
    syncbn: list[bool] = []
    prepare = distributed.prepare_student

    def spy(model, env_, device):
        out = prepare(model, env_, device)
        syncbn.append(any(isinstance(m, nn.SyncBatchNorm) for m in out.modules()))
        return out

    distributed.prepare_student = spy
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if env.is_main:
            write_synthetic(cfg, root / "dataset")
            run_splits(cfg, root / "dataset", root / "splits")
        distributed.barrier(env)
        device = env.device(cfg.run.device)
        t0 = time.time()
        summary = fit(cfg, RunPaths(root / "dataset", root / "splits" / "16", root / "run"), progress=False, dist=env)
        seconds = time.time() - t0
        losses = [row["loss"] for row in json.loads((root / "run" / "train_log.json").read_text())] if env.is_main else []
    distributed.shutdown()
    if env.is_main:
        print(json.dumps({
            "iterations": summary.iterations, "loss_finite": bool(losses) and all(map(math.isfinite, losses)),
            "losses": losses, "syncbn": syncbn[0] if syncbn else None, "device": str(device),
            "backend": "nccl" if device.type == "cuda" and env.source != "single" else ("gloo" if env.distributed else None),
            "world_size": env.world_size, "dtype": str(amp_dtype(cfg.train.precision, device) or torch.float32),
            "crop": crop, "seconds": round(seconds, 2),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        }))


if __name__ == "__main__":
    main()
