"""`ddfp submit`: `dvc repro` with the training stages fanned out to SLURM as one job array, leaving
DVC's lock and cache as a sequential `dvc repro` leaves them.

1. `dvc repro` of the stages before training (download, splits, weights), here: they are cheap or
   need the network, which compute nodes often lack.
2. `dvc status` names the train@ stages that changed. Each one's command is read from dvc.yaml and
   parsed by `ddfp train`'s own parser, so a job trains exactly what `dvc repro` would run there.
3. Those runs go to SLURM (pipeline.slurm.train_on_slurm): one job array, at most
   slurm.array_parallelism at once; a run whose job is still queued (an earlier `--no-wait`) is
   waited for, not submitted again; a finished checkpoint is taken as it is.
4. `dvc commit` records each finished train stage: the same lock entry (deps, params, outs) and
   cache entry that `dvc repro` writes after running the stage's command itself.
5. `dvc repro` runs the rest (evaluations, report); the train stages are up to date, so nothing
   trains in this process. A train stage that is still changed there (its job failed) is not
   reached: a failed job ends the command first, naming it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.errors import DataError, UsageError
from pipeline.params import Config, from_mapping
from pipeline.secrets import redact
from pipeline.train.trainer import RunPaths

# The stages the train stages depend on, run before anything is submitted.
BEFORE_TRAINING = ("download", "splits", "weights")
TRAIN_STAGE = "train"
# The sections the command's own config gives every job (--set of them is allowed): DVC records none.
OURS = ("run", "slurm", "tracking")
# ddfp train's argv (without "ddfp") -> (its config, its paths, its --export): parsed by the CLI's own parser.
Invocation = Callable[[list[str]], tuple[Config, RunPaths, Path | None]]


TRAIN_COMMAND = ["ddfp", "train"]  # what the train stage's cmd must start with


def dvc(root: Path, *args: str, capture: bool = False) -> str:
    """Run `dvc <args>` in root; its output streams to the user unless captured; DataError on failure."""
    done = subprocess.run(["dvc", *args], cwd=root, text=True, capture_output=capture)
    if done.returncode:
        detail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] if capture else []
        raise DataError(redact(f"`dvc {' '.join(args)}` failed (exit {done.returncode})"
                               + (f": {detail[0]}" if detail else "")))
    return done.stdout or ""


def train_stages(cfg: Config) -> dict[str, dict[str, str]]:
    """train@<split>-<method> -> its matrix item: the names DVC gives the train stage's matrix."""
    return {f"{TRAIN_STAGE}@{split}-{method}": {"split": split, "method": method}
            for split in cfg.data.splits for method in cfg.methods}


def changed(root: Path, stages: list[str]) -> list[str]:
    """The stages among `stages` that `dvc status` reports as changed (never run, or stale)."""
    status = json.loads(dvc(root, "status", "--json", *stages, capture=True) or "{}")
    return [s for s in stages if s in status]


def stage_argv(root: Path, items: list[dict[str, str]]) -> list[list[str]]:
    """The train stage's command for each matrix item, as DVC interpolates it: ${item.<key>} from the
    item, any other ${a.b} from params.yaml (both files read once)."""
    template = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][TRAIN_STAGE]["cmd"]
    values = yaml.safe_load((root / "params.yaml").read_text())

    def argv(item: dict[str, str]) -> list[str]:
        def value(match: re.Match[str]) -> str:
            keys = match.group(1).split(".")
            if keys[0] == "item":
                return item[keys[1]]
            node: Any = values
            for key in keys:
                node = node[key]
            return str(node)

        words = shlex.split(re.sub(r"\$\{([^}]+)\}", value, template))
        if words[:2] != TRAIN_COMMAND:
            raise UsageError(f"dvc.yaml: the {TRAIN_STAGE} stage runs `{' '.join(words[:2])}`, not `ddfp train`")
        return words[1:]

    return [argv(item) for item in items]


def check_no_training_overrides(cfg: Config, stage_cfg: Config, stage: str) -> None:
    """The submitted config may differ from the stage's only where DVC does not look (run, slurm,
    tracking): a --set of a trained value would leave last.pt disagreeing with what dvc.lock records."""
    ours, theirs = cfg.training_values(), stage_cfg.training_values()
    diff = sorted(k for k in ours.keys() | theirs.keys() if k != "train.method" and ours.get(k) != theirs.get(k))
    if diff:
        raise UsageError(f"{diff[0]}: differs from params.yaml ({theirs.get(diff[0])!r}), which {stage} records; "
                         "edit params.yaml instead (`ddfp submit` may only change run, slurm and tracking values)")


def run_submit(cfg: Config, root: Path, invocation: Invocation, block: bool = True,
               status_every: float | None = 60.0) -> list[str]:
    """Bring the pipeline up to date with the training on SLURM; returns the train stages recorded.

    cfg: the command's config (params.yaml, with --set of run / slurm / tracking values): it gives
    the SLURM resources and tracking; each run trains its stage's own config. status_every: seconds
    between status tables while waiting (None: none)."""
    from pipeline.slurm import SlurmJobError, train_on_slurm
    from pipeline.status import every

    dvc(root, "repro", *BEFORE_TRAINING)
    items = train_stages(cfg)
    todo = changed(root, list(items))
    configs, runs, exports = {}, {}, {}
    for stage, argv in zip(todo, stage_argv(root, [items[stage] for stage in todo])):
        stage_cfg, paths, exports[stage] = invocation(argv)
        check_no_training_overrides(cfg, stage_cfg, stage)
        if not configs and stage_cfg.run.launcher != "slurm":
            print("note: run.launcher is local in params.yaml, so a plain `dvc repro` here would train on this "
                  "machine; on a login node set it to slurm", file=sys.stderr)
        configs[stage] = from_mapping({**stage_cfg.to_dict(), **{k: cfg.to_dict()[k] for k in OURS}})
        runs[stage] = paths
    print(f"{len(todo)} train stage(s) to bring up to date on SLURM: {', '.join(todo) or 'none'}", file=sys.stderr)
    try:
        show = every(status_every) if status_every is not None else None
        finished = train_on_slurm(cfg, runs, configs, block=block, on_poll=(lambda: show(runs)) if show else None)
    except SlurmJobError as err:
        _commit(root, list(err.finished), configs, runs, exports)  # what did finish is kept, and recorded
        raise
    _commit(root, list(finished), configs, runs, exports)
    if not block and len(finished) < len(todo):
        print("submitted; `ddfp submit` again waits for these jobs (it submits nothing they cover), records "
              "them in dvc.lock and runs the evaluations", file=sys.stderr)
        return list(finished)
    dvc(root, "repro")
    return list(finished)


def _commit(root: Path, stages: list[str], configs: dict[str, Config], runs: dict[str, RunPaths],
            exports: dict[str, Path | None]) -> None:
    """Write each finished stage's model (what its command writes after training), then record them."""
    from pipeline.train.export import export_run

    for stage in stages:
        if exports[stage] is not None:
            export_run(configs[stage], runs[stage].out_dir, root / exports[stage])
    if stages:
        dvc(root, "commit", "--force", *stages)


__all__ = ["BEFORE_TRAINING", "Invocation", "changed", "run_submit", "stage_argv", "train_stages"]
