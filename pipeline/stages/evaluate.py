"""`ddfp evaluate`: a finished checkpoint -> the metrics JSON that `dvc metrics show` lists, the run
record beside it that `ddfp report` reads, and the same numbers, a confusion-matrix figure and
prediction overlays in the training run's MLflow run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ddfp.inference import predict
from pipeline import figures
from pipeline.files import write_json_atomic
from pipeline.params import Config
from pipeline.tracking.model_export import save_pytorch_model
from pipeline.tracking.tracker import Tracker, open_tracker
from pipeline.train.export import load_network
from pipeline.train.loaders import val_loader
from pipeline.train.validation import evaluate_models


def run_evaluate(cfg: Config, ckpt: Path, data_root: Path, split_dir: Path, out: Path) -> dict[str, Any]:
    """Evaluate the network a run reports (eval.model; the student of the supervised baseline):
    `ckpt` is its export (model.pt) or the finished training checkpoint (last.pt).

    The metrics file holds scalars and the reported model's per-class IoU (what `dvc metrics show`
    should list); the sibling `<name>.run.json` says which run they are of (run id, its own trained
    values, its curves: what `ddfp report` reads), and `<name>.confusion.json` holds the confusion
    matrices.

    The architecture and training values come from the checkpoint (what was trained); only the
    evaluation protocol (eval.*) and tracking (tracking.*) come from the current configuration.
    Tracking first sends what the training could not (an outage), creating its run if need be.
    """
    net = load_network(ckpt, cfg, today=("eval", "tracking"))
    state, trained, device, reported = net.state, net.trained, net.device, net.name
    models = {reported: net.model}
    loader = val_loader(trained, data_root, split_dir)
    results = evaluate_models(models, loader, trained, device)
    tracker = open_tracker(trained, run_dir=Path(state["run_dir"]))
    tracker.attach(state.get("run_id"))
    tracker.flush()
    run_id = tracker.run_id or state.get("run_id")
    best, best_epoch = best_evaluation(state["evals"], reported, results[reported]["miou"], state["epoch"])
    metrics = {
        "val_miou": results[reported]["miou"], "reported_model": reported, "method": trained.train.method,
        "split": split_dir.name, "dataset": trained.data.dataset, "seed": trained.train.seed,
        "iterations": state["iteration"], "run_id": run_id,
        **{f"val_miou_{k}": v["miou"] for k, v in results.items()},
        "val_miou_best": best, "best_epoch": best_epoch,
        "per_class_iou": results[reported]["iou"],
    }
    write_json_atomic(metrics, out)
    write_json_atomic(run_record(trained, state, split_dir.name, reported, run_id), out.with_suffix(".run.json"))
    write_json_atomic({k: v["confusion"] for k, v in results.items()}, out.with_suffix(".confusion.json"))
    if trained.tracking.enabled:
        log_evaluation(tracker, trained, metrics, results, ckpt, models[reported], loader, device)
        tracker.flush()
    return metrics


def best_evaluation(evals: list[dict[str, Any]], model: str, final_miou: float, final_epoch: int) -> tuple[float, int]:
    """The reported model's best val mIoU over the training's evaluations and the final one, with its
    epoch (the first on a tie). The authors, like UniMatch, report this; the pipeline's val_miou is
    the final model's. Training evaluations used the eval settings of their time."""
    scored = [(e[f"val_miou_{model}"], e["epoch"]) for e in evals if f"val_miou_{model}" in e]
    return max([*scored, (final_miou, final_epoch)], key=lambda s: s[0])


RUN_KEYS = ("data.dataset", "profile", "train.method", "train.seed", "model.backbone", "perturb.eps",
            "train.conf_thresh")


def run_record(trained: Config, state: dict[str, Any], split: str, reported: str, run_id: str | None) -> dict[str, Any]:
    """Which run the metrics are of: its id, its own trained values, its loss and val mIoU curves."""
    flat = trained.flat()
    return {
        "run_id": run_id, "split": split, "iterations": state["iteration"], "reported_model": reported,
        "config": {k: flat[k] for k in RUN_KEYS},
        "history": [{"iteration": row["iteration"], "loss": row["loss"]} for row in state["history"]],
        "evals": [{k: v for k, v in row.items() if k in ("epoch", "iteration") or k.startswith("val_miou_")}
                  for row in state["evals"]],
    }


def log_evaluation(tracker: Tracker, cfg: Config, metrics: dict[str, Any], results: dict[str, Any], ckpt: Path,
                   model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Final numbers, per-class IoU, figures, and the reported model as an MLflow model (and its
    registered version), else the checkpoint (or its path)."""
    step = int(metrics["iterations"])
    scalars = {k: v for k, v in metrics.items() if k.startswith("val_miou") or k == "best_epoch"}
    per_class = {f"final_iou_{m}/{c}": v for m, r in results.items() for c, v in r["iou"].items()}
    tracker.log_metrics({**scalars, **per_class}, step)
    names = cfg.spec.class_names
    with tempfile.TemporaryDirectory() as tmp:
        for name, r in results.items():
            fig = figures.confusion_figure(r["confusion"], names, f"{name}: mIoU {r['miou']:.1f}",
                                           Path(tmp) / f"confusion_{name}.png")
            tracker.log_artifact(fig, "figures")
        for fig in overlays(cfg, model, loader, device, Path(tmp)):
            tracker.log_artifact(fig, "overlays")
        if cfg.tracking.log_model:
            example = next(iter(loader))["img"][0]
            tracker.log_artifact(save_pytorch_model(model, example, len(names), Path(tmp) / "model"), "model")
            if cfg.tracking.register_model:
                tracker.register_model(f"ddfp-{cfg.data.dataset}-{cfg.train.method}",
                                       {"split": metrics["split"], "seed": str(metrics["seed"])})
    size_mb = ckpt.stat().st_size / 2**20
    if not cfg.tracking.log_model and size_mb <= cfg.tracking.checkpoint_max_mb:  # else the model has it
        tracker.log_artifact(ckpt, "checkpoint")
    tracker.set_tags({"checkpoint_path": str(ckpt.resolve()), "checkpoint_mb": f"{size_mb:.1f}",
                      "reported_model": metrics["reported_model"]})


@torch.no_grad()
def overlays(cfg: Config, model: nn.Module, loader: DataLoader, device: torch.device, out_dir: Path) -> list[Path]:
    """Image | ground truth | prediction for the first tracking.num_overlays validation images."""
    model.eval()
    paths: list[Path] = []
    for batch in loader:
        preds = predict(model, batch["img"].to(device), cfg.eval_protocol)
        for img, gt, pred in zip(batch["img"], batch["mask"], preds.cpu()):
            if len(paths) >= cfg.tracking.num_overlays:
                return paths
            i = len(paths)
            paths.append(figures.overlay_figure(img.numpy(), gt.numpy(), pred.numpy(), f"val image {i}",
                                                out_dir / f"val_{i:02d}.png"))
    return paths
