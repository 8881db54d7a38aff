"""`ddfp evaluate`: a finished checkpoint -> the metrics JSON that `dvc metrics show` lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddfp.config import Config, from_mapping
from ddfp.data.spec import get_spec
from ddfp.model import build_model
from pipeline import checkpoint
from pipeline.evaluate import evaluate_models, write_json_atomic
from pipeline.loaders import val_loader
from pipeline.trainer import select_device


def run_evaluate(cfg: Config, ckpt: Path, data_root: Path, split_dir: Path, out: Path) -> dict[str, Any]:
    """Evaluate student and teacher of `ckpt`; `val_miou` is the reported model's (eval.model).

    The metrics file holds scalars and the reported model's per-class IoU (what `dvc metrics show`
    should list); the confusion matrices go to a sibling `<name>.confusion.json`.

    The architecture and training values come from the checkpoint (what was trained); only the
    evaluation protocol (eval.*) comes from the current configuration.
    """
    state = checkpoint.load(ckpt)
    if not state.get("done"):
        raise ValueError(f"{ckpt}: training has not finished (resume it with `ddfp train`)")
    trained = from_mapping({**state["config"], "eval": cfg.to_dict()["eval"]})
    spec = get_spec(trained.data.dataset)
    device = select_device(cfg.train.device)
    models = {}
    for name in ("student", "teacher"):
        model = build_model(trained.model, spec.num_classes)
        model.load_state_dict(state[name])
        models[name] = model.to(device)
    if trained.train.method == "supervised":
        models.pop("teacher")  # never updated: it is the initial network
    results = evaluate_models(models, val_loader(trained, data_root, split_dir), trained, device)
    reported = trained.eval.model if trained.eval.model in results else "student"
    metrics = {
        "val_miou": results[reported]["miou"], "reported_model": reported, "method": trained.train.method,
        "split": split_dir.name, "dataset": trained.data.dataset, "iterations": state["iteration"],
        **{f"val_miou_{k}": v["miou"] for k, v in results.items()},
        "per_class_iou": results[reported]["iou"],
    }
    write_json_atomic(metrics, out)
    write_json_atomic({k: v["confusion"] for k, v in results.items()}, out.with_suffix(".confusion.json"))
    return metrics
