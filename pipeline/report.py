"""`ddfp report`: the metrics of every split side by side (reports/results.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ddfp.config import Config


def collect(metrics_dir: Path, splits: list[str]) -> pd.DataFrame:
    """One row per split of the profile, in the profile's order; a missing file is an error."""
    rows = []
    for split in splits:
        path = metrics_dir / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics for split {split} (run `ddfp evaluate` first)")
        m = json.loads(path.read_text())
        rows.append({"split": split, "method": m["method"], "model": m["reported_model"],
                     "val_miou": m["val_miou"], **m["per_class_iou"]})
    return pd.DataFrame(rows)


def write_report(cfg: Config, metrics_dir: Path, out: Path) -> Path:
    table = collect(metrics_dir, cfg.data.splits)
    text = (
        f"# Results: {cfg.data.dataset} ({cfg.profile} profile)\n\n"
        f"Validation mIoU (%) per labelled split; method `{cfg.train.method}`, backbone "
        f"`{cfg.model.backbone}`, eps {cfg.perturb.eps}, threshold {cfg.train.conf_thresh}.\n\n"
        + table.to_markdown(index=False, floatfmt=".2f") + "\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
