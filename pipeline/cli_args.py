"""What every `ddfp` subcommand shares on its command line: the pipeline's default layout and the
config options (--params, --profile, --set). Kept apart from pipeline/cli.py so that the modules
defining a command's parser (pipeline/sweep/command.py) reuse them without importing the router."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pipeline import params
from pipeline.errors import UsageError
from pipeline.params import Config

# The DVC pipeline's layout (dvc.yaml spells the same paths): the defaults of the commands run beside it.
LAYOUT = {"data": Path("data/dataset"), "splits": Path("data/splits"), "weights": Path("data/weights"),
          "runs": Path("runs"), "metrics": Path("metrics"), "reports": Path("reports")}


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--profile", help="use pipeline/profiles/<name>.yaml instead of the params file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set perturb.eps=2.0 (repeatable)")


def load_config(args: argparse.Namespace) -> Config:
    return params.load(args.params, args.profile, params.parse_overrides(args.overrides))


def parse_seeds_of(items: Sequence[str]) -> dict[str, list[int]]:
    """`--seeds-of ARM=SEED,SEED,...` (repeatable) -> {arm: seeds}."""
    seeds_of = {}
    for item in items:
        arm, _, listed = item.partition("=")
        if not listed or not all(x.strip().isdigit() for x in listed.split(",")):
            raise UsageError(f"--seeds-of {item!r}: expected ARM=SEED,SEED,... (e.g. fixmatch=0,1,2,3,4)")
        seeds_of[arm.strip()] = [int(x) for x in listed.split(",")]
    return seeds_of


__all__ = ["parse_seeds_of", "LAYOUT", "config_args", "load_config"]
