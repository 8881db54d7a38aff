"""`ddfp report`: the runs `dvc repro` evaluated, side by side.

It reads exactly the evaluate stage's outputs, metrics/<split>/<method>.json and .run.json beside it,
for every split of data.splits and method of `methods`, and nothing else: the DVC stage declares
everything the report depends on, and the report is what `dvc repro` produced. Every run is shown with
its own trained values (method, seed, eps, threshold, backbone, run id), never the current
configuration's; a run without its files is named with the command that makes them. All runs of every
configuration (ablations, sweeps, sensitivity runs) are browsed in the MLflow UI, not here.

Writes reports/results.md (split x method, mean +- std over seeds, DDFP's gain over the supervised
baseline; the paper's Pascal numbers beside ours on Pascal; the runs), reports/miou_vs_labels.png
(one line per method), reports/class_iou.png, reports/training_curves.png and the data of dvc.yaml's
top-level plots in reports/plots/. `summary_text` is the same table for the terminal (`ddfp summary`,
the end of `make demo`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ddfp.config import METHODS
from pipeline import figures
from pipeline.errors import DataError
from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.params import Config

# The paper's numbers: val mIoU (%), classic Pascal splits, ResNet-101. DDFP's row as quoted by
# SemiOVS (the 732/1464 entries match the authors' logs); supervised: U2PL's baselines.
PAPER = {
    "pascal": {
        "DDFP (paper)": {"92": 75.0, "183": 78.0, "366": 79.5, "732": 81.2, "1464": 82.0},
        "supervised (U2PL)": {"92": 45.77, "183": 54.92, "366": 65.88, "732": 71.69, "1464": 72.50},
    },
}
BASELINE = METHODS[0]  # the supervised baseline: every other method's gain is over it
FIGURES = ("miou_vs_labels.png", "class_iou.png", "training_curves.png")


def evaluate_stage(split: str, method: str) -> str:
    """The DVC stage (matrix item) that writes metrics/<split>/<method>.json."""
    return f"evaluate@{split}-{method}"


def read_run(metrics_dir: Path, split: str, method: str) -> tuple[dict[str, Any], dict[str, Any]] | list[Path]:
    """The metrics and run record of one split and method, or the files of it that are missing."""
    files = [metrics_dir / split / f"{method}.json", metrics_dir / split / f"{method}.run.json"]
    absent = [p for p in files if not p.is_file()]
    if absent:
        return absent
    try:
        metrics, run = (json.loads(p.read_text()) for p in files)
    except json.JSONDecodeError as err:
        raise DataError(f"{files[0]} or {files[1].name}: not JSON ({err}); "
                        f"rerun `dvc repro {evaluate_stage(split, method)}`") from None
    return metrics, run


def run_row(split: str, metrics: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """One report row: the run's own values and numbers, and the per-class IoU of its reported model."""
    c = run["config"]
    iou = {f"{metrics['reported_model']}/{k}": v for k, v in metrics["per_class_iou"].items()}
    return {"split": split, "method": c["train.method"], "seed": c["train.seed"], "eps": c["perturb.eps"],
            "threshold": c["train.conf_thresh"], "backbone": c["model.backbone"], "model": metrics["reported_model"],
            "iterations": run["iterations"], "val_miou": metrics["val_miou"], "run_id": run["run_id"],
            # absent from metrics written before the evaluate stage recorded the best evaluation
            "best": metrics.get("val_miou_best"), "best_epoch": metrics.get("best_epoch"), **iou}


def load_runs(cfg: Config, metrics_dir: Path) -> tuple[pd.DataFrame, dict[str, dict[str, Any]], list[str]]:
    """The rows, the run records (curves) by 'method / split', and one line per run whose files are missing."""
    rows, records, missing = [], {}, []
    for split in cfg.data.splits:
        for method in cfg.methods:
            found = read_run(metrics_dir, split, method)
            stage = evaluate_stage(split, method)
            if isinstance(found, list):
                missing.append(f"- {method} on split {split}: no {', '.join(str(p) for p in found)}; "
                               f"`dvc repro {stage}` makes {'them' if len(found) > 1 else 'it'}")
                continue
            try:
                rows.append(run_row(split, *found))
            except (KeyError, TypeError) as err:
                raise DataError(f"{metrics_dir / split / method}.json / .run.json: not the evaluate stage's output "
                                f"(no {err}); rerun `dvc repro {stage}`") from None
            records[f"{method} / {split}"] = found[1]
    return pd.DataFrame(rows), records, missing


def labels_of(split: str, order: list[str]) -> int:
    """Labelled-image count of a split id ('92' -> 92); non-numeric ids keep their profile order."""
    return int(split) if split.isdigit() else order.index(split) + 1


def summarise(frame: pd.DataFrame, cfg: Config, value: str = "val_miou") -> pd.DataFrame:
    """Mean, std and count over seeds of `value` (val_miou: the final model; best: the best evaluation
    over training) per (split, method); the paper's value where there is one."""
    g = frame.groupby(["split", "method"])[value]
    summary = pd.concat([g.mean().rename("mean"), g.std().rename("std"), g.count().rename("seeds")], axis=1)
    summary = summary.reset_index()
    summary["labels"] = [labels_of(s, cfg.data.splits) for s in summary["split"]]
    paper = PAPER.get(cfg.data.dataset, {}).get("DDFP (paper)", {})
    summary["paper"] = summary["split"].map(paper)
    return summary.sort_values(["labels", "method"])


def markdown_table(summary: pd.DataFrame, cfg: Config) -> str:
    cell = lambda r: f"{r['mean']:.2f}" + (f" ± {r['std']:.2f} ({r['seeds']})" if r["seeds"] > 1 else "")  # noqa: E731
    wide = summary.assign(cell=summary.apply(cell, axis=1)).pivot(index="split", columns="method", values="cell")
    methods = [m for m in METHODS if m in wide.columns] + [m for m in wide.columns if m not in METHODS]
    wide = wide[methods]
    means = summary.pivot(index="split", columns="method", values="mean")
    if BASELINE in means.columns:
        for method in (m for m in methods if m != BASELINE):
            gain = means[method] - means[BASELINE]
            wide[f"{method} - {BASELINE}"] = gain.map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    for name, values in PAPER.get(cfg.data.dataset, {}).items():
        wide[name] = [f"{values[s]:.2f}" if s in values else "" for s in wide.index]
    wide = wide.loc[sorted(wide.index, key=lambda s: labels_of(s, cfg.data.splits))]
    wide.index.name = "labels"
    # Cells are preformatted strings: keep tabulate from re-parsing them as numbers.
    return wide.fillna("").reset_index().to_markdown(index=False, disable_numparse=True)


def class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-class IoU of the reported model, averaged over seeds: rows 'method / split'."""
    cols = [c for c in frame.columns if "/" in c]
    long = frame.melt(id_vars=["split", "method", "model"], value_vars=cols, var_name="key", value_name="iou")
    long = long[long["key"].str.split("/").str[0] == long["model"]]  # the reported model's classes only
    long["class"] = long["key"].str.split("/", n=1).str[1]
    table = long.groupby(["method", "split", "class"], sort=False)["iou"].mean().unstack("class")
    table.index = [f"{m} / {s}" for m, s in table.index]
    return table


def curves(records: dict[str, dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Training loss and the reported model's val mIoU over iterations, per run, from its run record."""
    out = {}
    for label, run in records.items():
        model = run["reported_model"]
        loss = pd.DataFrame(run["history"], columns=["iteration", "loss"]).rename(columns={"iteration": "step"})
        val = pd.DataFrame([(e["iteration"], e.get(f"val_miou_{model}")) for e in run["evals"]],
                           columns=["step", "val_miou"])
        frame = pd.concat([loss, val], ignore_index=True).sort_values("step")
        out[label] = frame
    return out


def runs_table(frame: pd.DataFrame, cfg: Config) -> str:
    """One line per run with its own configuration: which numbers these are."""
    frame = frame.assign(labels=[labels_of(s, cfg.data.splits) for s in frame["split"]]).sort_values("labels")
    cells = pd.DataFrame({
        "labels": frame["split"], "method": frame["method"], "seed": frame["seed"].astype(str),
        "eps": frame["eps"].astype(str), "threshold": frame["threshold"].astype(str), "backbone": frame["backbone"],
        "model": frame["model"], "iterations": frame["iterations"].astype(str),
        "val mIoU": frame["val_miou"].map(lambda v: f"{v:.2f}"),
        "best (epoch)": [f"{b:.2f} (epoch {int(e)})" if pd.notna(b) else "" for b, e in zip(frame["best"], frame["best_epoch"])],
        "run": frame["run_id"].fillna("not tracked"),
    })
    return cells.to_markdown(index=False, disable_numparse=True)


def write_figures(cfg: Config, frame: pd.DataFrame, records: dict[str, dict[str, Any]], out_dir: Path) -> None:
    title = f"{cfg.data.dataset} ({cfg.profile} profile)"
    figures.miou_vs_labels(summarise(frame, cfg), out_dir / "miou_vs_labels.png", title)
    table = class_table(frame)
    if not table.empty:
        figures.class_heatmap(table, out_dir / "class_iou.png", f"per-class IoU (%), {title}")
    figures.training_curves(curves(records), out_dir / "training_curves.png", title)


def write_plot_data(cfg: Config, frame: pd.DataFrame, records: dict[str, dict[str, Any]], out_dir: Path) -> None:
    """The data of dvc.yaml's top-level plots, one line per `series` (their template is
    .dvc/plots/series.json): the reported model's val mIoU against iteration per run, and the mean
    final val mIoU against labelled images per method. The PNGs' numbers, for `dvc plots diff`."""
    val = [{"series": label, "iteration": e["iteration"], "val_miou": e[f"val_miou_{run['reported_model']}"]}
           for label, run in records.items() for e in run["evals"] if f"val_miou_{run['reported_model']}" in e]
    summary = summarise(frame, cfg) if not frame.empty else pd.DataFrame(columns=["method", "labels", "mean"])
    labels = [{"series": r.method, "labels": int(r.labels), "val_miou": float(r.mean)} for r in summary.itertuples()]
    write_json_atomic(val, out_dir / "plots" / "val_miou.json")
    write_json_atomic(labels, out_dir / "plots" / "miou_vs_labels.json")


def best_section(frame: pd.DataFrame, cfg: Config) -> list[str]:
    """The same table for the best evaluation over training: the protocol of the authors (and of
    UniMatch), which the paper's numbers follow; the table above is the final model's."""
    if frame["best"].isna().all():
        return []
    return ["## Best evaluation over training\n",
            "Each run's best val mIoU among its evaluations during training and the final one (epoch in the Runs "
            "table): the protocol the paper's numbers follow. The table above is the final model's.\n",
            markdown_table(summarise(frame.dropna(subset=["best"]), cfg, "best"), cfg) + "\n"]


def write_report(cfg: Config, metrics_dir: Path, out: Path) -> Path:
    frame, records, missing = load_runs(cfg, metrics_dir)
    write_plot_data(cfg, frame, records, out.parent)
    parts = [f"# Results: {cfg.data.dataset} ({cfg.profile} profile)\n",
             f"Validation mIoU (%) per number of labelled images, of the runs whose evaluation is in "
             f"`{metrics_dir}/` (what `dvc repro` evaluated), of the final model; mean ± std (seeds) where a cell has "
             f"several seeds. "
             f"Each run's own configuration is listed under Runs.\n"]
    if frame.empty:
        parts.append("No split has been evaluated yet.\n")
    else:
        write_figures(cfg, frame, records, out.parent)
        parts += [markdown_table(summarise(frame, cfg), cfg) + "\n", *best_section(frame, cfg),
                  "## Runs\n", runs_table(frame, cfg) + "\n"]
    if missing:
        parts.append("**Missing runs** (not in the tables):\n\n" + "\n".join(missing) + "\n")
    if not frame.empty:
        parts.append("![mIoU vs labels](miou_vs_labels.png)\n\n![training curves](training_curves.png)\n")
    return write_text_atomic(out, "\n".join(parts))


def numeric_markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A numeric table as markdown with '-' where a value is missing (tabulate only knows None)."""
    cells = frame.astype(object).where(frame.notna(), None)
    return cells.to_markdown(index=False, floatfmt=floatfmt, missingval="-")


def mlflow_hint(uri: str) -> str:
    """How to look at the runs of `uri`: the address of a server, or the UI command for a store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    # The UI command of this interpreter's environment (`make demo` runs from the venv), short when in the project.
    mlflow = Path(sys.executable).parent / "mlflow"
    shown = os.path.relpath(mlflow) if mlflow.is_relative_to(Path.cwd()) else str(mlflow)
    return f"{shown} ui --backend-store-uri {uri} --port 5000, then open http://127.0.0.1:5000"


def summary_text(cfg: Config, metrics_dir: Path, reports_dir: Path, tracking_uri: str) -> str:
    """The split x method table of val mIoU, the runs still missing, and where the outputs are."""
    frame, _, missing = load_runs(cfg, metrics_dir)
    table = markdown_table(summarise(frame, cfg), cfg) if not frame.empty else "No run has been evaluated yet."
    lines = [f"Validation mIoU (%), {cfg.data.dataset} ({cfg.profile} profile), from {metrics_dir}/:", "", table, ""]
    if missing:
        lines += ["Missing runs:", *missing, ""]
    outputs = [reports_dir / "results.md", *(reports_dir / name for name in FIGURES)]
    lines += ["Report and figures (`ddfp report` writes them):",
              *(f"  {p}{'' if p.is_file() else ' (not written yet)'}" for p in outputs),
              f"MLflow runs: {mlflow_hint(tracking_uri)}"]
    return "\n".join(lines)
