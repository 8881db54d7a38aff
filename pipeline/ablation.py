"""`ddfp ablation`: supervised vs mean teacher vs DDFP, every split of the profile, several seeds.

Each (method, split, seed) is an ordinary training run (tracked in MLflow like any other) in
`<work>/<method>/<split>/seed<k>`, followed by the evaluate stage's protocol. A finished run keeps its
metrics file and drops its checkpoint (27 demo checkpoints would take 5 GB), so rerunning the command
continues where it stopped and retrains nothing that finished.

Writes <out>/ablation.json ({method: {split: [mIoU per seed]}}), ablation.md (mean ± std, the
evidence goals, the perturbation diagnostics) and ablation.png (mIoU vs labels with error bars).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from ddfp.config import Config, replace
from pipeline import figures
from pipeline.evaluation_stage import run_evaluate
from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.report import labels_of, numeric_markdown
from pipeline.trainer import RunPaths, fit

METHODS = ("supervised", "mean_teacher", "ddfp")
# The goals at the smallest split (mean over seeds, mIoU points).
GOALS = {"supervised": 10.0, "mean_teacher": 1.0}
DIAGNOSTICS = ("confident_ratio", "nll_before", "nll_after", "delta_norm", "v_norm", "loss_unsup", "loss_perturb")


def run_one(cfg: Config, data_root: Path, split_dir: Path, weights: Path | None, run_dir: Path,
            progress: bool) -> dict[str, Any]:
    """Train and evaluate one (method, split, seed), or read its finished metrics."""
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    fit(cfg, RunPaths(data_root, split_dir, run_dir, weights), progress=progress)
    metrics = run_evaluate(cfg, run_dir / "last.pt", data_root, split_dir, metrics_path)
    metrics["diagnostics"] = _diagnostics(run_dir / "train_log.json")
    write_json_atomic(metrics, metrics_path)
    (run_dir / "last.pt").unlink()
    return metrics


def _diagnostics(train_log: Path) -> dict[str, float]:
    """Means over the logged iterations of the last epoch (where every phase is active)."""
    rows = json.loads(train_log.read_text())
    last = [r for r in rows if r["epoch"] == rows[-1]["epoch"]] if rows else []
    return {k: statistics.fmean(r[k] for r in last) for k in DIAGNOSTICS if last and all(k in r for r in last)}


def run_ablation(cfg: Config, data_root: Path, splits_dir: Path, weights: Path | None, work: Path, out: Path,
                 seeds: list[int], methods: list[str], progress: bool = True) -> dict[str, dict[str, list[float]]]:
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"--methods: unknown {sorted(unknown)}; known: {', '.join(METHODS)}")
    results: dict[str, dict[str, list[float]]] = {m: {s: [] for s in cfg.data.splits} for m in methods}
    diagnostics: list[dict[str, Any]] = []
    for split in cfg.data.splits:
        for method in methods:
            for seed in seeds:
                run_cfg = replace(cfg, {"train.method": method, "train.seed": seed})
                m = run_one(run_cfg, data_root, splits_dir / split, weights,
                            work / method / split / f"seed{seed}", progress)
                results[method][split].append(m["val_miou"])
                diagnostics.append({"method": method, "split": split, "seed": seed, **m.get("diagnostics", {})})
    write_outputs(cfg, results, pd.DataFrame(diagnostics), out)
    return results


def summary_frame(cfg: Config, results: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    rows = [{"method": m, "split": s, "labels": labels_of(s, cfg.data.splits), "mean": statistics.fmean(v),
             "std": statistics.stdev(v) if len(v) > 1 else 0.0, "seeds": len(v)}
            for m, per_split in results.items() for s, v in per_split.items() if v]
    return pd.DataFrame(rows)


def goal_lines(cfg: Config, summary: pd.DataFrame) -> list[str]:
    """DDFP against each baseline at the smallest split, with the issue's goal."""
    smallest = min(cfg.data.splits, key=lambda s: labels_of(s, cfg.data.splits))
    at = summary[summary.split == smallest].set_index("method")
    lines = []
    for base, goal in GOALS.items():
        if "ddfp" in at.index and base in at.index:
            d, b = at.loc["ddfp"], at.loc[base]
            gap = d["mean"] - b["mean"]
            # The standard error of a difference of two means: how much of the gap the seeds explain.
            se = math.sqrt(d["std"] ** 2 / d["seeds"] + b["std"] ** 2 / b["seeds"])
            verdict = "met" if gap >= goal else "NOT met"
            lines.append(f"- split {smallest}: DDFP - {base} = {gap:+.2f} ± {se:.2f} (standard error) mIoU "
                         f"(goal >= +{goal:g}: {verdict})")
    return lines


def write_outputs(cfg: Config, results: dict[str, dict[str, list[float]]], diagnostics: pd.DataFrame,
                  out: Path) -> None:
    summary = summary_frame(cfg, results)
    write_json_atomic(results, out / "ablation.json")
    title = f"ablation: {cfg.data.dataset}, {cfg.model.backbone} ({cfg.profile} profile)"
    figures.miou_vs_labels(summary, out / "ablation.png", title)
    cell = summary.assign(cell=[f"{r['mean']:.2f} ± {r['std']:.2f} ({r['seeds']})" for _, r in summary.iterrows()])
    table = cell.pivot(index="labels", columns="method", values="cell")
    table = table[[m for m in METHODS if m in table.columns]].reset_index()
    diag = diagnostics.drop(columns="seed").groupby(["method", "split"]).mean(numeric_only=True).dropna(how="all")
    text = "\n".join([
        f"# Ablation: {cfg.data.dataset} ({cfg.profile} profile)", "",
        f"Validation mIoU (%), mean ± std over seeds (count); eps {cfg.perturb.eps}, threshold "
        f"{cfg.train.conf_thresh}, {cfg.train.epochs} epochs. Raw values: ablation.json.", "",
        table.to_markdown(index=False, disable_numparse=True), "", "Goals:", *goal_lines(cfg, summary), "",
        "Diagnostics (means over the last epoch's logged iterations, then over seeds):", "",
        numeric_markdown(diag.reset_index()) if not diag.empty else "(none logged)", "",
        "![mIoU vs labels](ablation.png)", "",
    ])
    write_text_atomic(out / "ablation.md", text)
