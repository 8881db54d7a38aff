"""The dataset, split lists and weights of a command that trains outside the DVC pipeline (`ddfp sweep`,
`ddfp ablation`), found or made without ever rewriting the DVC pipeline's outputs or another
profile's inputs.

- A path given on the command line is used as given and only read.
- When the command's inputs are the pipeline's (the values the download, splits and weights stages
  read equal params.yaml's, and the splits it needs are among params.yaml's), `dvc repro` of those
  stages makes or confirms `data/dataset`, `data/splits` and `data/weights`: DVC keeps its lock and
  cache right, and they stay DVC's.
- Otherwise (another profile, other data values, or no DVC project here) they are made in a folder
  of their own, `data/profiles/<profile>-<hash of those values>/{dataset,splits,weights}`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from pipeline import params
from pipeline.errors import BusyError, DataError, UsageError
from pipeline.params import Config

# The params of dvc.yaml's download, splits and weights stages (data.splits apart: a split's lists
# depend only on its size and the seed, so a subset of the pipeline's splits is the pipeline's).
INPUT_KEYS = ("data.dataset", "data.split_seed", "synthetic", "download", "model.backbone", "model.pretrained")
PIPELINE_DIR = Path("data")  # data/{dataset,splits,weights}: the stages' outputs (dvc.yaml)
OWN_DIR = Path("data/profiles")
# For `--help`: where a command's inputs come from when no path is given.
INPUTS_RULE = ("the DVC pipeline's data/dataset, made or confirmed by `dvc repro download splits weights`, when this "
               "config's data values (the data stages' params) are params.yaml's; otherwise "
               "data/profiles/<profile>-<hash>/dataset, made here. Another profile's inputs are never replaced")


@dataclass(frozen=True)
class Inputs:
    data: Path
    splits: Path  # holds <split>/{labeled,unlabeled,val}.txt
    weights: Path | None  # <backbone>.pth; None when model.pretrained is false


def input_values(cfg: Config) -> dict[str, Any]:
    """The values that decide what the three data stages write."""
    return {k: v for k, v in cfg.flat().items()
            if k == "data.splits" or any(k == p or k.startswith(f"{p}.") for p in INPUT_KEYS)}


def is_pipelines(cfg: Config, pipeline: Config, splits: Sequence[str]) -> bool:
    """Whether the DVC pipeline's data stages (configured by `pipeline`) make what `cfg` needs."""
    mine, theirs = input_values(cfg), input_values(pipeline)
    mine.pop("data.splits"), theirs.pop("data.splits")
    return mine == theirs and set(splits) <= set(pipeline.data.splits)


def own_dir(cfg: Config, root: Path) -> Path:
    digest = hashlib.sha256(json.dumps(input_values(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return root / OWN_DIR / f"{cfg.profile}-{digest}"


def resolve_inputs(cfg: Config, splits: Sequence[str], *, data: Path | None = None, splits_dir: Path | None = None,
                   weights: Path | None = None, root: Path = Path(".")) -> Inputs:
    """The inputs to train `splits` of `cfg` on: the given paths, the rest found or made (module doc)."""
    if data is not None and splits_dir is None:
        raise UsageError(f"--data {data}: give the split lists drawn from it too (--splits-dir or --split-dir)")
    for path, kind in ((data, "--data"), (splits_dir, "--splits-dir")):
        if path is not None and not path.is_dir():
            raise DataError(f"{kind} {path}: no such directory (given paths are only read, never made)")
    pretrained = cfg.model.pretrained
    if pretrained and weights is not None and not weights.is_file():
        raise DataError(f"--weights {weights}: no such file (given paths are only read, never made)")
    need = {"dataset": data is None, "splits": splits_dir is None, "weights": pretrained and weights is None}
    made = _made(cfg, splits, need, root) if any(need.values()) else None
    return Inputs(data or made.data, splits_dir or made.splits,
                  (weights or made.weights) if pretrained else None)


def _made(cfg: Config, splits: Sequence[str], need: dict[str, bool], root: Path) -> Inputs:
    params_file = root / "params.yaml"
    if (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file() and params_file.is_file() \
            and is_pipelines(cfg, params.load(params_file), splits):
        return _pipeline_inputs(cfg, splits, need, root)
    return _own_inputs(cfg, splits, need, own_dir(cfg, root))


def _pipeline_inputs(cfg: Config, splits: Sequence[str], need: dict[str, bool], root: Path) -> Inputs:
    base = root / PIPELINE_DIR
    made = Inputs(base / "dataset", base / "splits", base / "weights" / f"{cfg.model.backbone}.pth")
    # `dvc repro splits` brings its upstream download along.
    targets = ["splits"] if need["splits"] else ["download"] if need["dataset"] else []
    _dvc_repro(root, targets + (["weights"] if need["weights"] else []))
    _check_made(made, splits, need)
    return made


def _dvc_repro(root: Path, targets: list[str]) -> None:
    cmd = [sys.executable, "-m", "dvc", "repro", *targets]
    shown = f"`dvc repro {' '.join(targets)}`"
    print(f"{shown} (the DVC pipeline's inputs)", file=sys.stderr, flush=True)
    # The stages call `ddfp`: this interpreter's scripts go first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(res.stdout)
    if res.returncode:
        last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else f"exit {res.returncode}"
        cls = BusyError if "Unable to acquire lock" in res.stdout else DataError
        raise cls(f"{shown} in {root.resolve()} failed: {last}")


def _own_inputs(cfg: Config, splits: Sequence[str], need: dict[str, bool], own: Path) -> Inputs:
    from pipeline.stages.download import run_download
    from pipeline.stages.splits import run_splits
    from pipeline.stages.weights import run_weights

    made = Inputs(own / "dataset", own / "splits", own / "weights" / f"{cfg.model.backbone}.pth")
    print(f"{own}: the inputs of profile {cfg.profile} (not the DVC pipeline's, which stay untouched)",
          file=sys.stderr, flush=True)
    with _locked(own / ".lock"):  # two commands making the same folder take turns
        if (need["dataset"] or need["splits"]) and not made.data.is_dir():
            run_download(cfg, made.data)  # the generated dataset is written whole or not at all
        if need["splits"] and not _has_splits(made.splits, splits):
            run_splits(cfg, made.data, made.splits)
        if need["weights"] and not made.weights.is_file():
            run_weights(cfg, made.weights.parent)
    _check_made(made, splits, need)
    return made


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _has_splits(splits_dir: Path, splits: Sequence[str]) -> bool:
    return all((splits_dir / s / "labeled.txt").is_file() for s in splits)


def _check_made(made: Inputs, splits: Sequence[str], need: dict[str, bool]) -> None:
    if need["dataset"] and not made.data.is_dir():
        raise DataError(f"{made.data}: no dataset after making it")
    if need["splits"] and not _has_splits(made.splits, splits):
        raise DataError(f"{made.splits}: no lists for splits {list(splits)} after making them")
    if need["weights"] and not made.weights.is_file():
        raise DataError(f"{made.weights}: no weights file after making it")


__all__ = ["Inputs", "INPUT_KEYS", "INPUTS_RULE", "input_values", "is_pipelines", "own_dir", "resolve_inputs"]
