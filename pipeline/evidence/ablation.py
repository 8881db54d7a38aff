"""`ddfp ablation`: the controlled ablation of DDFP, paired by seed, resumable on any machine.

Arms (ARMS): every method of the method table (supervised, mean teacher, FixMatch, UniMatch, DDFP),
DDFP's three controls of the density direction (eps = 0: the same network, BN routing and loss weights
with no perturbation; a random direction of the same per-pixel norm; UniMatch's feature dropout in
the perturbation's place), and supervised training on every training image of the smallest split.
The plan: every arm at the smallest split with `seeds` (or its own list, `seeds_of`), the methods on
the other splits with `curve_seeds` (the label curve); seeds are given up front, never chosen after
the results.

Each finished run leaves a small record, `<out>/ablation_runs/<arm>/<split>/seed<k>.json` (its mIoU,
per-class IoU, the config values it was trained with, the code digest, diagnostics), meant to be
committed (`--commit` commits each as it lands). A rerun, on this machine or a fresh clone, trains only
the cells without a record of the same configuration; the work directory (checkpoints of unfinished
runs) stays under `runs/`. Outputs: ablation_stats.write_outputs.

With run.launcher: slurm every cell without a record is one task of one job array (at most
slurm.array_parallelism at once); each task trains, evaluates and writes its record itself (CellJob),
so this process only waits, then reads the records as a local run does: the outputs are the same.
A rerun waits for the tasks still queued and submits none of them again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.errors import DataError, JobError, UsageError
from pipeline.evidence.arms import ARMS, CURVE_ARMS
from pipeline.evidence.ablation_stats import write_outputs
from pipeline.evidence.diagnostics import pseudo_label_diagnostics, train_log_diagnostics
from pipeline.evidence.record_commits import check_commit, commit_records, try_commit
from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.local_pool import usable_cores, visible_gpus, worker_slots
from pipeline.params import Config, from_mapping, replace
from pipeline.slurm import TrainJob, train_on_slurm
from pipeline.stages.evaluate import run_evaluate
from pipeline.stages.report import labels_of
from pipeline.train.code_version import code_digest
from pipeline.train.distributed import SINGLE, DistEnv
from pipeline.train.fit import fit
from pipeline.train.loaders import read_split_file
from pipeline.train.trainer import RunPaths, StopFlag


@dataclass(frozen=True)
class Cell:
    arm: str
    split: str
    seed: int


def smallest_split(splits: list[str]) -> str:
    return min(splits, key=lambda s: labels_of(s, splits))


def plan(splits: list[str], arms: list[str], seeds: list[int], curve_seeds: list[int],
         seeds_of: Mapping[str, Sequence[int]] | None = None, curve_arms: Sequence[str] = CURVE_ARMS) -> list[Cell]:
    """The smallest split first, seed by seed (an interrupted ablation leaves complete pairs), then the
    curve. seeds_of: arms that train other seeds than `seeds` at the smallest split, and curve_arms
    the arms of the curve (a budget that cannot hold every run keeps them for what the goals compare)."""
    first, seeds_of = smallest_split(splits), seeds_of or {}
    order = list(dict.fromkeys([*seeds, *(s for arm_seeds in seeds_of.values() for s in arm_seeds)]))
    cells = [Cell(arm, first, seed) for seed in order for arm in arms if seed in seeds_of.get(arm, seeds)]
    others = sorted((s for s in splits if s != first), key=lambda s: labels_of(s, splits))
    return cells + [Cell(arm, split, seed) for split in others for seed in curve_seeds
                    for arm in arms if arm in curve_arms]


def arm_config(cfg: Config, cell: Cell) -> Config:
    method, overrides = ARMS[cell.arm]
    # One evaluation, at the end: a record holds the final numbers only, and on 2 CPU cores the
    # intermediate sliding-window evaluations cost about a fifth of a demo run.
    return replace(cfg, {"train.method": method, "train.seed": cell.seed, "run.eval_every": cfg.train.epochs,
                         **overrides})


DEFAULTS = from_mapping({})  # every key at its schema default
_NO_DEFAULT = object()


def record_config(cfg: Config) -> dict[str, Any]:
    """The values a record's numbers depend on (Config.result_values, the one definition that resumes,
    sweeps and DVC's params follow too; data.splits only lists which splits exist), as JSON stores
    them (tuples become lists)."""
    values = {k: v for k, v in cfg.result_values().items() if k != "data.splits"}
    return json.loads(json.dumps(values))


def same_values(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a record was trained with `current`'s values. A key the record lacks was added to the
    configuration after it, with a default that keeps the behaviour of before: it matches when
    `current` holds that default."""
    defaults = record_config(DEFAULTS)
    return set(recorded) <= set(current) and all(
        recorded[k] == v if k in recorded else v == defaults.get(k, _NO_DEFAULT) for k, v in current.items())


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
    return record if same_values(record.get("config") or {}, record_config(cfg)) else None


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


def cell_split_dir(cell: Cell, splits_dir: Path, work: Path) -> Path:
    split_dir = splits_dir / cell.split
    return all_labels_split(split_dir, work) if cell.arm == "all_labels" else split_dir


def cell_dir(work: Path, cell: Cell) -> Path:
    return work / cell.arm / cell.split / f"seed{cell.seed}"


def cell_of(run_dir: Path) -> Cell:
    """The cell a run directory of cell_dir belongs to."""
    return Cell(run_dir.parent.parent.name, run_dir.parent.name, int(run_dir.name.removeprefix("seed")))


def train_cell(run_cfg: Config, cell: Cell, data_root: Path, split_dir: Path, weights: Path | None,
               work: Path, progress: bool, dist: DistEnv = SINGLE, stop: StopFlag | None = None) -> dict[str, Any] | None:
    """Train (or resume) and evaluate one cell -> its record (None on the other ranks of a
    multi-task job); the checkpoint is dropped afterwards."""
    run_dir = cell_dir(work, cell)
    fit(run_cfg, RunPaths(data_root, split_dir, run_dir, weights), progress=progress, dist=dist, stop=stop)
    if not dist.is_main:
        return None
    metrics = run_evaluate(run_cfg, run_dir / "last.pt", data_root, split_dir, run_dir / "metrics.json")
    diagnostics = {**train_log_diagnostics(run_dir / "train_log.json"),
                   **pseudo_label_diagnostics(run_cfg, run_dir / "last.pt", data_root, split_dir)}
    record = {"arm": cell.arm, "split": cell.split, "seed": cell.seed, **metrics, "code_digest": code_digest(),
              "config": record_config(run_cfg), "diagnostics": diagnostics}
    metrics["diagnostics"] = diagnostics  # beside the run too: benchmarks/sensitivity.sh reads it there
    write_json_atomic(metrics, run_dir / "metrics.json")
    (run_dir / "last.pt").unlink()
    return record


class CellJob(TrainJob):
    """One cell on SLURM: its run directory (cell_dir) names the cell; the record goes under `out`."""

    def __init__(self, work: Path, out: Path) -> None:
        self.work, self.out = Path(work).absolute(), Path(out).absolute()

    def run(self, cfg: Config, paths: RunPaths, env: Any, stop: Any) -> dict[str, Any] | None:
        cell = cell_of(Path(paths.out_dir))
        record = train_cell(cfg, cell, paths.data_root, paths.split_dir, paths.weights, self.work, True, env, stop)
        if record is not None:  # rank 0
            write_json_atomic(record, record_path(self.out, cell))
        return record


def train_cells_on_slurm(cfg: Config, cells: list[Cell], split_dirs: dict[Cell, Path], data_root: Path,
                         weights: Path | None, work: Path, out: Path) -> None:
    """Submit the cells as one array and wait; a SlurmJobError names the cells whose job failed."""
    if not cells:
        return
    labels = {f"{c.arm}/{c.split}/seed{c.seed}": c for c in cells}
    runs = {label: RunPaths(data_root, split_dirs[c], cell_dir(work, c), weights) for label, c in labels.items()}
    configs = {label: arm_config(cfg, c) for label, c in labels.items()}
    train_on_slurm(cfg, runs, configs, job=CellJob(work, out))


def _take_slot(slots: "multiprocessing.Queue[dict[str, str]]") -> None:
    # A pool worker's own GPU and share of the cores (local_pool.worker_slots), set before it
    # touches CUDA; torch is already imported here, so its thread count is set directly too.
    import torch

    slot = slots.get()
    os.environ.update(slot)
    torch.set_num_threads(int(slot["OMP_NUM_THREADS"]))


def _pool_cell(config: dict[str, Any], cell: Cell, split_dir: Path, data_root: Path, weights: Path | None,
               work: Path) -> dict[str, Any]:
    record = train_cell(from_mapping(config), cell, data_root, split_dir, weights, work, progress=False)
    assert record is not None  # one process: the main one
    return record


def train_cells_in_pool(cfg: Config, cells: list[Cell], split_dirs: dict[Cell, Path], data_root: Path,
                        weights: Path | None, work: Path, out: Path, jobs: int, commit: bool) -> None:
    """Train the cells in `jobs` worker processes (one GPU each, or cores / jobs threads each: two
    one-thread processes do more work on 2 cores than one two-thread process on these small
    tensors), in plan order. This process writes (and commits) each record as its cell ends, so git
    is only ever called from here; a failed cell does not stop the others, and all failures are
    raised together at the end."""
    if not cells:
        return
    slots = worker_slots(jobs, visible_gpus(), usable_cores())
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch or CUDA state
    queue = ctx.Queue()
    for slot in slots:
        queue.put(slot)
    errors = []
    with ProcessPoolExecutor(len(slots), mp_context=ctx, initializer=_take_slot, initargs=(queue,)) as pool:
        futures = {pool.submit(_pool_cell, arm_config(cfg, c).to_dict(), c, split_dirs[c], data_root, weights,
                               work): c for c in cells}
        for future in as_completed(futures):
            cell = futures[future]
            name = f"{cell.arm}/{cell.split}/seed{cell.seed}"
            try:
                record = future.result()
            except Exception as err:  # noqa: BLE001 - every cell's failure is reported, none stops the rest
                errors.append(f"{name}: {type(err).__name__}: {err}")
                continue
            path = record_path(out, cell)
            write_json_atomic(record, path)
            print(f"ablation: {name} val mIoU {record['val_miou']:.2f}", flush=True)
            if commit:
                try_commit([path], f"ablation: {name}")
    if errors:
        raise JobError(f"{len(errors)} of {len(cells)} ablation runs failed (the others are recorded):\n  "
                       + "\n  ".join(errors))


def run_ablation(cfg: Config, data_root: Path, splits_dir: Path, weights: Path | None, work: Path, out: Path,
                 seeds: Sequence[int], arms: Sequence[str], curve_seeds: Sequence[int] = (0, 1, 2),
                 progress: bool = True, commit: bool = False, jobs: int = 1,
                 seeds_of: Mapping[str, Sequence[int]] | None = None,
                 curve_arms: Sequence[str] = CURVE_ARMS, report_only: bool = False) -> dict[str, Any]:
    """Every planned cell's record (read, or trained and written), then the outputs. jobs > 1: the
    missing cells train in that many local worker processes (train_cells_in_pool). report_only: the
    outputs of the records there are, training nothing (an ablation still under way elsewhere); the
    report says how many planned runs it lacks."""
    unknown = (set(arms) | set(seeds_of or {}) | set(curve_arms)) - set(ARMS)
    if unknown:
        raise ValueError(f"--arms: unknown {sorted(unknown)}; known: {', '.join(ARMS)}")
    if jobs < 1:
        raise UsageError(f"-j {jobs}: the number of worker processes must be at least 1")
    if commit:
        check_commit(out)
    cells = plan(cfg.data.splits, list(arms), list(seeds), list(curve_seeds), seeds_of, curve_arms)
    if report_only:
        found = [(r, record_path(out, c)) for c in cells if (r := read_record(record_path(out, c), arm_config(cfg, c)))]
        if not found:
            raise DataError(f"{out / 'ablation_runs'}: no record of this plan yet; nothing to report")
        return write_outputs(cfg, [r for r, _ in found], out, code_digest(), planned=len(cells))
    if cfg.run.launcher == "slurm":
        todo = [c for c in cells if read_record(record_path(out, c), arm_config(cfg, c)) is None]
        try:
            train_cells_on_slurm(cfg, todo, {c: cell_split_dir(c, splits_dir, work) for c in todo}, data_root,
                                 weights, work, out)
        finally:  # what finished is recorded, and committed, even when another cell's job failed
            if commit and todo:
                commit_records([p for c in todo if (p := record_path(out, c)).is_file()], "ablation: records")
    elif jobs > 1:
        todo = [c for c in cells if read_record(record_path(out, c), arm_config(cfg, c)) is None]
        train_cells_in_pool(cfg, todo, {c: cell_split_dir(c, splits_dir, work) for c in todo}, data_root, weights,
                            work, out, jobs, commit)
    records, paths = [], []
    for cell in cells:
        run_cfg, path = arm_config(cfg, cell), record_path(out, cell)
        record = read_record(path, run_cfg)
        if record is None:
            if cfg.run.launcher == "slurm":  # its job wrote no record: never train it here, on a login node
                raise DataError(f"{path}: the SLURM job of {cell.arm}/{cell.split}/seed{cell.seed} wrote no record")
            record = train_cell(run_cfg, cell, data_root, cell_split_dir(cell, splits_dir, work), weights, work,
                                progress)
            assert record is not None  # one process: the main one
            write_json_atomic(record, path)
            if commit:
                try_commit([path], f"ablation: {cell.arm}/{cell.split}/seed{cell.seed}")
        records.append(record)
        paths.append(path)
    if commit and paths:  # records of an earlier run whose commit failed (another git process held the index)
        commit_records(paths, "ablation: records")
    return write_outputs(cfg, records, out, code_digest(), planned=len(cells))
