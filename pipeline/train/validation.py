"""Validation: the configured inference protocol + an accumulated confusion matrix."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ddfp.config import MethodConfig
from ddfp.inference import predict
from ddfp.metrics import confusion_matrix, iou_per_class, mean_iou
from pipeline.train.distributed import all_reduce_sum


# Asked before each batch (its index): True abandons the evaluation. Training passes one that sees
# SLURM's stop request, because a long evaluation (sliding windows on Cityscapes) can outlast the
# signal's head start on the time limit.
StopCheck = Callable[[int], bool]


@torch.no_grad()
def confusion(model: nn.Module, loader: DataLoader, cfg: MethodConfig, device: torch.device,
              stop: StopCheck | None = None) -> torch.Tensor | None:
    """The confusion matrix over the loader (summed over ranks), or None when `stop` ended it early."""
    protocol, n = cfg.eval_protocol, cfg.spec.num_classes
    was_training = model.training
    model.eval()
    cm = torch.zeros(n, n, dtype=torch.long, device=device)
    try:
        for i, batch in enumerate(loader):
            if stop is not None and stop(i):
                return None
            img, mask = batch["img"].to(device), batch["mask"].to(device)
            cm += confusion_matrix(predict(model, img, protocol), mask, n)
    finally:
        model.train(was_training)
    # Under torch.distributed each rank saw its own shard of the list (val_loader): the sum is the
    # matrix of the whole list, exactly (integer counts). A no-op in one process.
    return all_reduce_sum(cm).cpu()


def summarise(cm: torch.Tensor, class_names: tuple[str, ...]) -> dict[str, Any]:
    ious = iou_per_class(cm)
    return {
        "miou": round(mean_iou(cm), 4),
        "iou": {name: (None if torch.isnan(v) else round(float(v) * 100, 4)) for name, v in zip(class_names, ious)},
    }


def evaluate_models(models: dict[str, nn.Module], loader: DataLoader, cfg: MethodConfig, device: torch.device,
                    stop: StopCheck | None = None) -> dict | None:
    """{name: {miou, iou, confusion}} for each model (student, teacher); None when `stop` ended it."""
    names = cfg.spec.class_names
    out = {}
    for name, model in models.items():
        cm = confusion(model, loader, cfg, device, stop)
        if cm is None:
            return None
        out[name] = {**summarise(cm, names), "confusion": cm.tolist()}
    return out

