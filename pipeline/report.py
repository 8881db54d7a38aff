"""`ddfp report`: label splits (and methods, seeds) side by side, from the MLflow runs.

Reads the finished training runs of the profile from MLflow (the latest run per split, method and
seed), so seeds and methods trained outside `dvc repro` (ablations, sweeps' promoted values) appear
beside the pipeline's own. Without a reachable tracking store it falls back to metrics/<split>.json.

Writes reports/results.md (split x method, mean +- std over seeds; the paper's Pascal numbers beside
ours on Pascal), reports/miou_vs_labels.png, reports/class_iou.png and reports/training_curves.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ddfp.config import Config
from pipeline import figures
from pipeline.secrets import redact
from pipeline.tracking import KIND_TAG, experiment_name, project_dir, tracking_uri

# ../shared/ddfp_method.md section 2: val mIoU (%), classic Pascal splits, ResNet-101. DDFP's row as
# quoted by SemiOVS (the 732/1464 entries match the authors' logs); supervised: U2PL's baselines.
PAPER = {
    "pascal": {
        "DDFP (paper)": {"92": 75.0, "183": 78.0, "366": 79.5, "732": 81.2, "1464": 82.0},
        "supervised (U2PL)": {"92": 45.77, "183": 54.92, "366": 65.88, "732": 71.69, "1464": 72.50},
    },
}
METHOD_ORDER = ("supervised", "mean_teacher", "ddfp")


def from_mlflow(cfg: Config) -> pd.DataFrame:
    """One row per (split, method, seed): the latest finished, evaluated run of this profile."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    runs = mlflow.search_runs(
        experiment_names=[experiment_name(cfg)], output_format="pandas",
        filter_string=f"tags.{KIND_TAG} = 'train' and tags.profile = '{cfg.profile}' and attributes.status = 'FINISHED'",
    )
    if runs.empty or "metrics.val_miou" not in runs:
        return pd.DataFrame()
    runs = runs.dropna(subset=["metrics.val_miou"])
    runs = runs[runs["tags.split"].isin(cfg.data.splits)].sort_values("start_time")
    runs = runs.drop_duplicates(["tags.split", "tags.method", "tags.seed"], keep="last")
    frame = pd.DataFrame({
        "split": runs["tags.split"], "method": runs["tags.method"], "seed": runs["tags.seed"].astype(int),
        "val_miou": runs["metrics.val_miou"], "run_id": runs["run_id"],
        "model": runs.get("tags.reported_model", "teacher"),
    })
    for col in runs.columns:  # per-class IoU of the reported model
        if col.startswith("metrics.final_iou_"):
            model, cls = col.removeprefix("metrics.final_iou_").split("/", 1)
            frame[f"{model}/{cls}"] = runs[col]
    return frame.reset_index(drop=True)


def from_metrics_files(cfg: Config, metrics_dir: Path) -> pd.DataFrame:
    """One row per split of the profile from the evaluate stage's JSON; a missing file is an error."""
    rows = []
    for split in cfg.data.splits:
        path = metrics_dir / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics for split {split} (run `ddfp evaluate` first)")
        m = json.loads(path.read_text())
        iou = {f"{m['reported_model']}/{k}": v for k, v in m["per_class_iou"].items()}
        rows.append({"split": split, "method": m["method"], "seed": m.get("seed", cfg.train.seed),
                     "val_miou": m["val_miou"], "run_id": m.get("run_id"), "model": m["reported_model"], **iou})
    return pd.DataFrame(rows)


def collect(cfg: Config, metrics_dir: Path) -> tuple[pd.DataFrame, str]:
    """The runs to report and where they came from."""
    if cfg.tracking.enabled:
        try:
            frame = from_mlflow(cfg)
            if not frame.empty:
                # The project's own store by its relative name: the report reads the same on any machine.
                uri = redact(tracking_uri(cfg)).replace(f"sqlite:///{project_dir()}/", "sqlite:///")
                return frame, f"MLflow ({uri})"
        except Exception as err:  # noqa: BLE001 - the JSON outputs are the documented fallback
            tqdm.write(f"warning: MLflow unavailable for the report ({redact(str(err)).splitlines()[0][:200]}); "
                       f"using {metrics_dir}/*.json")
    return from_metrics_files(cfg, metrics_dir), f"{metrics_dir}/*.json"


def labels_of(split: str, order: list[str]) -> int:
    """Labelled-image count of a split id ('92' -> 92); non-numeric ids keep their profile order."""
    return int(split) if split.isdigit() else order.index(split) + 1


def summarise(frame: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Mean, std and count over seeds per (split, method); the paper's value where there is one."""
    g = frame.groupby(["split", "method"])["val_miou"]
    summary = pd.concat([g.mean().rename("mean"), g.std().rename("std"), g.count().rename("seeds")], axis=1)
    summary = summary.reset_index()
    summary["labels"] = [labels_of(s, cfg.data.splits) for s in summary["split"]]
    paper = PAPER.get(cfg.data.dataset, {}).get("DDFP (paper)", {})
    summary["paper"] = summary["split"].map(paper)
    return summary.sort_values(["labels", "method"])


def markdown_table(summary: pd.DataFrame, cfg: Config) -> str:
    cell = lambda r: f"{r['mean']:.2f}" + (f" ± {r['std']:.2f} ({r['seeds']})" if r["seeds"] > 1 else "")  # noqa: E731
    wide = summary.assign(cell=summary.apply(cell, axis=1)).pivot(index="split", columns="method", values="cell")
    methods = [m for m in METHOD_ORDER if m in wide.columns] + [m for m in wide.columns if m not in METHOD_ORDER]
    wide = wide[methods]
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


def curves(cfg: Config, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Training loss and validation mIoU over iterations of one run per (split, method)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(cfg))
    out = {}
    for _, row in frame.drop_duplicates(["split", "method"]).iterrows():
        series = []
        for metric, name in (("loss", "loss"), (f"val_miou_{row['model']}", "val_miou")):
            hist = client.get_metric_history(row["run_id"], metric)
            series.append(pd.DataFrame({"step": [m.step for m in hist], name: [m.value for m in hist]}))
        out[f"{row['method']} / {row['split']}"] = pd.concat(series, ignore_index=True).sort_values("step")
    return out


def write_report(cfg: Config, metrics_dir: Path, out: Path) -> Path:
    frame, source = collect(cfg, metrics_dir)
    summary = summarise(frame, cfg)
    out_dir = out.parent
    title = f"{cfg.data.dataset}, {cfg.model.backbone} ({cfg.profile} profile)"
    figures.miou_vs_labels(summary, out_dir / "miou_vs_labels.png", title)
    table = class_table(frame)
    if not table.empty:
        figures.class_heatmap(table, out_dir / "class_iou.png", f"per-class IoU (%), {title}")
    if source.startswith("MLflow"):
        figures.training_curves(curves(cfg, frame), out_dir / "training_curves.png", title)
    text = (
        f"# Results: {cfg.data.dataset} ({cfg.profile} profile)\n\n"
        f"Validation mIoU (%) per number of labelled images; mean ± std (seeds) where a cell has several "
        f"seeds. Backbone `{cfg.model.backbone}`, eps {cfg.perturb.eps}, threshold {cfg.train.conf_thresh}. "
        f"Source: {source}, {len(frame)} runs.\n\n"
        + markdown_table(summary, cfg) + "\n\n"
        "![mIoU vs labels](miou_vs_labels.png)\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out


def numeric_markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A numeric table as markdown with '-' where a value is missing (tabulate only knows None)."""
    cells = frame.astype(object).where(frame.notna(), None)
    return cells.to_markdown(index=False, floatfmt=floatfmt, missingval="-")
