"""`ddfp ablation`: the controlled ablation of DDFP, paired by seed, resumable on any machine.

Arms (ARMS): supervised, mean teacher, DDFP, its two controls of the density direction (eps = 0:
the same network, BN routing and loss weights with no perturbation; a random direction of the same
per-pixel norm), and supervised training on every training image of the smallest split. The plan:
every arm at the smallest split with `seeds`, the three main methods on the other splits with
`curve_seeds` (the label curve); seeds are given up front, never chosen after the results.

Each finished run leaves a small record, `<out>/ablation_runs/<arm>/<split>/seed<k>.json` (its mIoU,
per-class IoU, the config values it was trained with, the code digest, diagnostics), meant to be
committed (`--commit` commits each as it lands). A rerun, on this machine or a fresh clone, trains only
the cells without a record of the same configuration; the work directory (checkpoints of unfinished
runs) stays under `runs/`. Outputs: ablation_stats.write_outputs.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from ddfp.config import METHODS
from ddfp.data.dataset import SegDataset
from ddfp.inference import class_scores
from ddfp.metrics import PSEUDO_LABEL_COUNTS, pseudo_label_counts, pseudo_label_quality
from pipeline.errors import DataError, UsageError
from pipeline.evidence.ablation_stats import write_outputs
from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.params import Config, replace, stored_config
from pipeline.stages.evaluate import run_evaluate, trained_models
from pipeline.stages.report import labels_of
from pipeline.train import checkpoint
from pipeline.train.code_version import code_digest
from pipeline.train.distributed import SINGLE
from pipeline.train.fit import fit
from pipeline.train.loaders import read_split_file
from pipeline.train.trainer import RunPaths

# arm -> (train.method, overrides): the one place an arm is defined.
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "supervised": ("supervised", {}),
    "mean_teacher": ("mean_teacher", {}),
    "ddfp": ("ddfp", {}),
    "ddfp_eps0": ("ddfp", {"perturb.eps": 0.0}),
    "ddfp_random": ("ddfp", {"perturb.direction": "random"}),
    "all_labels": ("supervised", {}),  # on all_labels_split(smallest split)
}
CURVE_ARMS = METHODS  # the label curve: the three methods, not the controls
# Values that cannot change a run's weights or its evaluation: a record stays valid when only these
# differ (data.splits only lists which splits exist; the others schedule, log or track).
NOT_RESULTS = ("profile", "methods", "data.splits", "run.num_workers", "download.", "run.device",
               "run.eval_every", "run.ckpt_every", "run.log_every", "run.launcher", "eval.batch_size",
               "tracking.", "slurm.", "sweep.")
TRAIN_LOG_KEYS = ("confident_ratio", "nll_fit", "nll_query", "nll_after", "delta_norm", "v_norm", "loss_unsup",
                  "loss_perturb")


@dataclass(frozen=True)
class Cell:
    arm: str
    split: str
    seed: int


def smallest_split(splits: list[str]) -> str:
    return min(splits, key=lambda s: labels_of(s, splits))


def plan(splits: list[str], arms: list[str], seeds: list[int], curve_seeds: list[int]) -> list[Cell]:
    """The smallest split first, seed by seed (an interrupted ablation leaves complete pairs), then the curve."""
    first = smallest_split(splits)
    cells = [Cell(arm, first, seed) for seed in seeds for arm in arms]
    others = sorted((s for s in splits if s != first), key=lambda s: labels_of(s, splits))
    return cells + [Cell(arm, split, seed) for split in others for seed in curve_seeds
                    for arm in arms if arm in CURVE_ARMS]


def arm_config(cfg: Config, cell: Cell) -> Config:
    method, overrides = ARMS[cell.arm]
    # One evaluation, at the end: a record holds the final numbers only, and on 2 CPU cores the
    # intermediate sliding-window evaluations cost about a fifth of a demo run.
    return replace(cfg, {"train.method": method, "train.seed": cell.seed, "run.eval_every": cfg.train.epochs,
                         **overrides})


def record_config(cfg: Config) -> dict[str, Any]:
    """The values a record's numbers depend on, as JSON stores them (tuples become lists)."""
    values = {k: v for k, v in cfg.flat().items() if not k.startswith(NOT_RESULTS)}
    return json.loads(json.dumps(values))


def record_path(out: Path, cell: Cell) -> Path:
    return out / "ablation_runs" / cell.arm / cell.split / f"seed{cell.seed}.json"


def read_record(path: Path, cfg: Config) -> dict[str, Any] | None:
    """The record at `path` when it was trained with cfg's values (of any code: the report says which)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not a JSON record ({err}); delete it to train that run again") from err
    return record if record.get("config") == record_config(cfg) else None


def all_labels_split(split_dir: Path, work: Path) -> Path:
    """<work>/splits/all_labels/<split>: the split's labelled and unlabelled images all labelled.

    The unlabelled list stays as it is, so an epoch (|unlabelled| / batch when train.iters_per_epoch
    is not set) and hence the iteration budget equal the split's own runs."""
    unlabeled = read_split_file(split_dir / "unlabeled.txt")
    missing = [img for img, mask in unlabeled if mask is None]
    if missing:
        raise ValueError(f"{split_dir / 'unlabeled.txt'}: {missing[:3]} have no mask; the all-labels arm needs one")
    dest = work / "splits" / "all_labels" / split_dir.name
    labeled = (split_dir / "labeled.txt").read_text().rstrip("\n") + "\n"
    write_text_atomic(dest / "labeled.txt", labeled + (split_dir / "unlabeled.txt").read_text())
    for name in ("unlabeled.txt", "val.txt"):
        write_text_atomic(dest / name, (split_dir / name).read_text())
    return dest


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
    state = checkpoint.load(ckpt)
    trained = stored_config({**state["config"], "eval": cfg.to_dict()["eval"]})
    spec = trained.spec
    device = SINGLE.device(cfg.run.device)
    models = trained_models(state, trained, device)
    name = "teacher" if "teacher" in models else "student"
    model = models[name].eval()
    dataset = SegDataset(data_root, lines, "val", trained.data.crop_size, trained.data.scale_range, spec.num_classes)
    background = spec.class_names.index("background") if "background" in spec.class_names else None
    counts = torch.zeros(len(PSEUDO_LABEL_COUNTS), dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=trained.eval.batch_size, num_workers=trained.run.num_workers):
        probs = class_scores(model, batch["img"].to(device), trained.eval_protocol)
        counts += pseudo_label_counts(probs, batch["mask"].to(device), cfg.train.conf_thresh, background).cpu()
    # null, not NaN, for a ratio over no pixels: records are strict JSON, read by any tool.
    quality = {f"pl_{k}": None if math.isnan(v) else v for k, v in pseudo_label_quality(counts).items()}
    return {"pl_model": name, **quality}


def train_cell(run_cfg: Config, cell: Cell, data_root: Path, split_dir: Path, weights: Path | None,
               work: Path, progress: bool) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell -> its record; the checkpoint is dropped afterwards."""
    run_dir = work / cell.arm / cell.split / f"seed{cell.seed}"
    fit(run_cfg, RunPaths(data_root, split_dir, run_dir, weights), progress=progress)
    metrics = run_evaluate(run_cfg, run_dir / "last.pt", data_root, split_dir, run_dir / "metrics.json")
    diagnostics = {**train_log_diagnostics(run_dir / "train_log.json"),
                   **pseudo_label_diagnostics(run_cfg, run_dir / "last.pt", data_root, split_dir)}
    record = {"arm": cell.arm, "split": cell.split, "seed": cell.seed, **metrics, "code_digest": code_digest(),
              "config": record_config(run_cfg), "diagnostics": diagnostics}
    metrics["diagnostics"] = diagnostics  # beside the run too: benchmarks/sensitivity.sh reads it there
    write_json_atomic(metrics, run_dir / "metrics.json")
    (run_dir / "last.pt").unlink()
    return record


def commit_records(paths: list[Path], message: str) -> None:
    """Commit these files, if they changed, and nothing else (git commit --only: whatever else is
    staged stays staged and uncommitted)."""
    names = [str(p.resolve()) for p in paths]
    cwd = paths[0].parent
    if not _git(cwd, "status", "--porcelain", "--", *names).strip():
        return
    _git(cwd, "add", "--", *names)
    _git(cwd, "commit", "-q", "--only", "-m", message, "--", *names)


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"{cwd}: `git {args[0]}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _check_commit(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=out, capture_output=True, text=True)
    if done.stdout.strip() != "true":
        raise UsageError(f"--commit: {out} is not inside a git work tree")


def run_ablation(cfg: Config, data_root: Path, splits_dir: Path, weights: Path | None, work: Path, out: Path,
                 seeds: Sequence[int], arms: Sequence[str], curve_seeds: Sequence[int] = (0, 1, 2),
                 progress: bool = True, commit: bool = False) -> dict[str, Any]:
    """Every planned cell's record (read, or trained and written), then the outputs."""
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"--arms: unknown {sorted(unknown)}; known: {', '.join(ARMS)}")
    if commit:
        _check_commit(out)
    records, paths = [], []
    for cell in plan(cfg.data.splits, list(arms), list(seeds), list(curve_seeds)):
        run_cfg, path = arm_config(cfg, cell), record_path(out, cell)
        record = read_record(path, run_cfg)
        if record is None:
            split_dir = splits_dir / cell.split
            if cell.arm == "all_labels":
                split_dir = all_labels_split(split_dir, work)
            record = train_cell(run_cfg, cell, data_root, split_dir, weights, work, progress)
            write_json_atomic(record, path)
            if commit:
                commit_records([path], f"ablation: {cell.arm}/{cell.split}/seed{cell.seed}")
        records.append(record)
        paths.append(path)
    if commit and paths:  # records of an earlier run whose commit failed (another git process held the index)
        commit_records(paths, "ablation: records")
    return write_outputs(cfg, records, out, code_digest())
