"""Gather the eps / threshold sensitivity runs (benchmarks/sensitivity.sh) beside the ablation's
default-setting runs of the same seed: reports/sensitivity.json and .md.

Each run directory is `ddfp ablation`'s layout, <root>/<method>/<split>/seed<k>/metrics.json, whose
config (eps, threshold) comes from the metrics' own run: nothing here is assumed about the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.stages.report import numeric_markdown

COLUMNS = ("confident_ratio", "nll_query", "nll_after", "delta_norm", "v_norm", "loss_unsup", "loss_perturb")


def _row(setting: str, metrics_path: Path) -> dict[str, Any]:
    m = json.loads(metrics_path.read_text())
    diag = m.get("diagnostics", {})
    return {"setting": setting, "method": m["method"], "seed": m["seed"], "val_miou": round(m["val_miou"], 2),
            **{k: round(diag[k], 3) for k in COLUMNS if k in diag}}


def gather(split: str, runs: Path, ablation: Path) -> pd.DataFrame:
    """One row per (setting, method): the ablation's seed-0 runs as `default`, then each sensitivity run."""
    rows = [_row("default", p) for p in sorted(ablation.glob(f"*/{split}/seed0/metrics.json"))]
    for setting in sorted(d for d in runs.iterdir() if d.is_dir()):
        rows += [_row(setting.name, p) for p in sorted(setting.glob(f"*/{split}/seed0/metrics.json"))]
    if not rows:
        raise FileNotFoundError(f"no metrics.json for split {split} under {runs} or {ablation}")
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, split: str, out: Path) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(frame.to_dict(orient="records"), out / "sensitivity.json")
    text = "\n".join([
        f"# DDFP sensitivity: split {split}, seed 0", "",
        "One setting changed at a time from the demo recipe's eps 4 and threshold 0.8; `default` rows are",
        "the ablation's seed-0 runs. Diagnostics: means over the last epoch's logged iterations.", "",
        numeric_markdown(frame), "",
    ])
    write_text_atomic(out / "sensitivity.md", text)
    return frame
