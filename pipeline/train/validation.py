"""Validation: the configured inference protocol + an accumulated confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ddfp.config import MethodConfig
from ddfp.inference import predict
from ddfp.metrics import confusion_matrix, iou_per_class, mean_iou
from pipeline.train.distributed import all_reduce_sum


@torch.no_grad()
def confusion(model: nn.Module, loader: DataLoader, cfg: MethodConfig, device: torch.device) -> torch.Tensor:
    protocol, n = cfg.eval_protocol, cfg.spec.num_classes
    was_training = model.training
    model.eval()
    cm = torch.zeros(n, n, dtype=torch.long, device=device)
    for batch in loader:
        img, mask = batch["img"].to(device), batch["mask"].to(device)
        cm += confusion_matrix(predict(model, img, protocol), mask, n)
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


def evaluate_models(models: dict[str, nn.Module], loader: DataLoader, cfg: MethodConfig, device: torch.device) -> dict:
    """{name: {miou, iou, confusion}} for each model (student, teacher)."""
    names = cfg.spec.class_names
    out = {}
    for name, model in models.items():
        cm = confusion(model, loader, cfg, device)
        out[name] = {**summarise(cm, names), "confusion": cm.tolist()}
    return out

