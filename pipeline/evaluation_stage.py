"""`ddfp evaluate`: a finished checkpoint -> the metrics JSON that `dvc metrics show` lists, and the
same numbers, a confusion-matrix figure and prediction overlays in the training run's MLflow run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ddfp.config import Config, from_mapping
from ddfp.data.spec import get_spec
from ddfp.inference import predict
from ddfp.model import build_model
from pipeline import checkpoint, figures
from pipeline.evaluate import evaluate_models, write_json_atomic
from pipeline.loaders import val_loader
from pipeline.tracking import MlflowTracker, Tracker, open_tracker
from pipeline.run_state import select_device


def run_evaluate(cfg: Config, ckpt: Path, data_root: Path, split_dir: Path, out: Path) -> dict[str, Any]:
    """Evaluate student and teacher of `ckpt`; `val_miou` is the reported model's (eval.model).

    The metrics file holds scalars and the reported model's per-class IoU (what `dvc metrics show`
    should list); the confusion matrices go to a sibling `<name>.confusion.json`.

    The architecture and training values come from the checkpoint (what was trained); only the
    evaluation protocol (eval.*) and tracking (tracking.*) come from the current configuration.
    """
    state = checkpoint.load(ckpt)
    if not state.get("done"):
        raise ValueError(f"{ckpt}: training has not finished (resume it with `ddfp train`)")
    current = cfg.to_dict()
    trained = from_mapping({**state["config"], "eval": current["eval"], "tracking": current["tracking"]})
    spec = get_spec(trained.data.dataset)
    device = select_device(cfg.train.device)
    models = {}
    for name in ("student", "teacher"):
        model = build_model(trained.model, spec.num_classes)
        model.load_state_dict(state[name])
        models[name] = model.to(device)
    if trained.train.method == "supervised":
        models.pop("teacher")  # never updated: it is the initial network
    loader = val_loader(trained, data_root, split_dir)
    results = evaluate_models(models, loader, trained, device)
    reported = trained.eval.model if trained.eval.model in results else "student"
    metrics = {
        "val_miou": results[reported]["miou"], "reported_model": reported, "method": trained.train.method,
        "split": split_dir.name, "dataset": trained.data.dataset, "seed": trained.train.seed,
        "iterations": state["iteration"], "run_id": state.get("run_id"),
        **{f"val_miou_{k}": v["miou"] for k, v in results.items()},
        "per_class_iou": results[reported]["iou"],
    }
    write_json_atomic(metrics, out)
    write_json_atomic({k: v["confusion"] for k, v in results.items()}, out.with_suffix(".confusion.json"))
    tracker = open_tracker(trained)
    if state.get("run_id") and isinstance(tracker, MlflowTracker):
        tracker.attach(state["run_id"])
        log_evaluation(tracker, trained, metrics, results, ckpt, models[reported], loader, device)
    return metrics


def log_evaluation(tracker: Tracker, cfg: Config, metrics: dict[str, Any], results: dict[str, Any], ckpt: Path,
                   model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Final numbers, per-class IoU of both models, figures and the checkpoint (or its path)."""
    step = int(metrics["iterations"])
    scalars = {k: v for k, v in metrics.items() if k.startswith("val_miou")}
    per_class = {f"final_iou_{m}/{c}": v for m, r in results.items() for c, v in r["iou"].items()}
    tracker.log_metrics({**scalars, **per_class}, step)
    names = get_spec(cfg.data.dataset).class_names
    with tempfile.TemporaryDirectory() as tmp:
        for name, r in results.items():
            fig = figures.confusion_figure(r["confusion"], names, f"{name}: mIoU {r['miou']:.1f}",
                                           Path(tmp) / f"confusion_{name}.png")
            tracker.log_artifact(fig, "figures")
        for fig in overlays(cfg, model, loader, device, Path(tmp)):
            tracker.log_artifact(fig, "overlays")
    size_mb = ckpt.stat().st_size / 2**20
    if size_mb <= cfg.tracking.checkpoint_max_mb:
        tracker.log_artifact(ckpt, "checkpoint")
    tracker.set_tags({"checkpoint_path": str(ckpt.resolve()), "checkpoint_mb": f"{size_mb:.1f}",
                      "reported_model": metrics["reported_model"]})


@torch.no_grad()
def overlays(cfg: Config, model: nn.Module, loader: DataLoader, device: torch.device, out_dir: Path) -> list[Path]:
    """Image | ground truth | prediction for the first tracking.num_overlays validation images."""
    spec = get_spec(cfg.data.dataset)
    mode, crop = cfg.eval.mode or spec.eval_mode, cfg.eval.crop_size or cfg.data.crop_size
    model.eval()
    paths: list[Path] = []
    for batch in loader:
        preds = predict(model, batch["img"].to(device), mode, crop, cfg.eval.stride_ratio, spec.num_classes)
        for img, gt, pred in zip(batch["img"], batch["mask"], preds.cpu()):
            if len(paths) >= cfg.tracking.num_overlays:
                return paths
            i = len(paths)
            paths.append(figures.overlay_figure(img.numpy(), gt.numpy(), pred.numpy(), f"val image {i}",
                                                out_dir / f"val_{i:02d}.png"))
    return paths
