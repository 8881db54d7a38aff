"""What a finished run's files say beyond its mIoU: means of the training log's diagnostics over the
last epoch, and the quality of the final model's pseudo-labels on the unlabelled images (the
ablation's records, benchmarks/threshold_scan.py)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ddfp.data.dataset import SegDataset
from ddfp.inference import class_scores
from ddfp.metrics import PSEUDO_LABEL_COUNTS, pseudo_label_counts, pseudo_label_quality
from pipeline.params import Config, replace
from pipeline.train.export import load_network
from pipeline.train.loaders import read_split_file

TRAIN_LOG_KEYS = ("confident_ratio", "nll_fit", "nll_query", "nll_after", "delta_norm", "v_norm", "loss_unsup",
                  "loss_perturb")


def train_log_diagnostics(train_log: Path) -> dict[str, float]:
    """Means over the logged iterations of the last epoch (where every phase is active), and the NLL rise
    of the perturbation step (nll_after - nll_query)."""
    rows = json.loads(train_log.read_text())
    last = [r for r in rows if r["epoch"] == rows[-1]["epoch"]] if rows else []
    out = {k: statistics.fmean(r[k] for r in last) for k in TRAIN_LOG_KEYS if last and all(k in r for r in last)}
    if "nll_after" in out and "nll_query" in out:
        out["nll_rise"] = out["nll_after"] - out["nll_query"]
    return out


@torch.no_grad()
def pseudo_label_diagnostics(cfg: Config, ckpt: Path, data_root: Path, split_dir: Path) -> dict[str, Any]:
    """The final teacher's pseudo-labels (the student's for supervised runs) on the unlabelled training
    images, predicted with cfg's evaluation protocol and scored against their masks at cfg's
    train.conf_thresh (a run's own, in the ablation; any, in a threshold scan)."""
    lines = read_split_file(split_dir / "unlabeled.txt")
    if any(mask is None for _, mask in lines):
        return {}  # no ground truth to score against
    teacher = replace(cfg, {"eval.model": "teacher"})  # what the pseudo-labels come from, whatever is reported
    net = load_network(ckpt, teacher)
    trained, spec, device, name = net.trained, net.trained.spec, net.device, net.name
    model = net.model.eval()
    dataset = SegDataset(data_root, lines, "val", trained.data.crop_size, trained.data.scale_range, spec.num_classes)
    background = spec.class_names.index("background") if "background" in spec.class_names else None
    counts = torch.zeros(len(PSEUDO_LABEL_COUNTS), dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=trained.eval.batch_size, num_workers=trained.run.num_workers):
        probs = class_scores(model, batch["img"].to(device), trained.eval_protocol)
        counts += pseudo_label_counts(probs, batch["mask"].to(device), cfg.train.conf_thresh, background).cpu()
    # null, not NaN, for a ratio over no pixels: records are strict JSON, read by any tool.
    quality = {f"pl_{k}": None if math.isnan(v) else v for k, v in pseudo_label_quality(counts).items()}
    return {"pl_model": name, **quality}


__all__ = ["TRAIN_LOG_KEYS", "pseudo_label_diagnostics", "train_log_diagnostics"]
