"""Validation: the configured inference protocol + an accumulated confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ddfp.config import Config
from ddfp.data.spec import get_spec
from ddfp.inference import predict, predict_sliding, predict_whole
from ddfp.metrics import confusion_matrix, iou_per_class, mean_iou
from pipeline.train.distributed import all_reduce_sum


@torch.no_grad()
def confusion(model: nn.Module, loader: DataLoader, cfg: Config, device: torch.device) -> torch.Tensor:
    spec = get_spec(cfg.data.dataset)
    mode = cfg.eval.mode or spec.eval_mode
    crop = cfg.eval.crop_size or cfg.data.crop_size
    was_training = model.training
    model.eval()
    cm = torch.zeros(spec.num_classes, spec.num_classes, dtype=torch.long, device=device)
    for batch in loader:
        img, mask = batch["img"].to(device), batch["mask"].to(device)
        pred = predict(model, img, mode, crop, cfg.eval.stride_ratio, spec.num_classes)
        cm += confusion_matrix(pred, mask, spec.num_classes)
    model.train(was_training)
    # Under torch.distributed each rank saw its own shard of the list (val_loader): the sum is the
    # matrix of the whole list, exactly (integer counts). A no-op in one process.
    return all_reduce_sum(cm).cpu()


@torch.no_grad()
def class_probs(model: nn.Module, img: torch.Tensor, cfg: Config) -> torch.Tensor:
    """B x C x H x W class probabilities under the evaluation protocol: the scores `confusion`
    takes the argmax of, for measuring pseudo-labels the way the model is evaluated."""
    spec = get_spec(cfg.data.dataset)
    mode, crop = cfg.eval.mode or spec.eval_mode, cfg.eval.crop_size or cfg.data.crop_size
    if mode == "sliding":
        return predict_sliding(model, img, crop, max(int(crop * cfg.eval.stride_ratio), 1), spec.num_classes)
    return predict_whole(model, img, crop).softmax(dim=1)


def summarise(cm: torch.Tensor, class_names: tuple[str, ...]) -> dict[str, Any]:
    ious = iou_per_class(cm)
    return {
        "miou": round(mean_iou(cm), 4),
        "iou": {name: (None if torch.isnan(v) else round(float(v) * 100, 4)) for name, v in zip(class_names, ious)},
    }


def evaluate_models(models: dict[str, nn.Module], loader: DataLoader, cfg: Config, device: torch.device) -> dict:
    """{name: {miou, iou, confusion}} for each model (student, teacher)."""
    names = get_spec(cfg.data.dataset).class_names
    out = {}
    for name, model in models.items():
        cm = confusion(model, loader, cfg, device)
        out[name] = {**summarise(cm, names), "confusion": cm.tolist()}
    return out

