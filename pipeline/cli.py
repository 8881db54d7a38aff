"""The `ddfp` console script: one subcommand per pipeline stage.

Paths go on the command line, values in params.yaml (or a named --profile), overrides with --set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from ddfp import config as config_mod
from ddfp.config import Config, ConfigError
from pipeline.fetch import DownloadError

NOT_YET = {"submit": "SLURM submission", "sweep": "Optuna sweeps"}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--profile", help="use profiles/<name>.yaml instead of the params file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set perturb.eps=2.0 (repeatable)")


def load_config(args: argparse.Namespace) -> Config:
    return config_mod.load(args.params, args.profile, config_mod.parse_overrides(args.overrides))


def cmd_profile(args: argparse.Namespace) -> None:
    """Rewrite params.yaml as the full config of a named profile (the whole pipeline follows)."""
    cfg = config_mod.load(None, args.name)
    header = (f"# Active configuration: profile '{args.name}' (profiles/{args.name}.yaml).\n"
              "# Switch with `ddfp profile <demo|smoke|pascal|cityscapes>`; edit values freely.\n")
    tmp = args.params.with_name(f".{args.params.name}.tmp")
    tmp.write_text(header + config_mod.dump_yaml(cfg))
    tmp.replace(args.params)
    print(f"{args.params}: now profile {args.name}")


def cmd_download(args: argparse.Namespace) -> None:
    from pipeline.download import run_download

    run_download(load_config(args), args.out)


def cmd_splits(args: argparse.Namespace) -> None:
    from pipeline.splits import run_splits

    summary = run_splits(load_config(args), args.data, args.out)
    print(json.dumps(summary, indent=2))


def cmd_weights(args: argparse.Namespace) -> None:
    from pipeline.weights import run_weights

    print(run_weights(load_config(args), args.out))


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline.trainer import RunPaths, fit

    cfg = load_config(args)
    weights = args.weights if args.weights and args.weights.is_file() else None
    if cfg.model.pretrained and weights is None:
        raise ConfigError(f"model.pretrained is true but --weights {args.weights} is not a file (run `ddfp weights`)")
    summary = fit(cfg, RunPaths(args.data, args.split_dir, args.out, weights))
    print(json.dumps({k: v for k, v in summary.items() if k != "evaluations"}, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pipeline.evaluation_stage import run_evaluate

    metrics = run_evaluate(load_config(args), args.ckpt, args.data, args.split_dir, args.out)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))


def cmd_report(args: argparse.Namespace) -> None:
    from pipeline.report import write_report

    print(write_report(load_config(args), args.metrics, args.out))


def cmd_bench(args: argparse.Namespace) -> None:
    from pipeline.bench import run_bench

    result = run_bench(load_config(args), args.what, args.settings, args.repeats)
    print(json.dumps(result, indent=None if args.json else 2))


def _not_yet(name: str) -> Callable[[argparse.Namespace], None]:
    def run(_: argparse.Namespace) -> None:
        raise SystemExit(f"ddfp {name}: not yet available ({NOT_YET[name]} is a planned issue)")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddfp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _config_args(p)
        p.set_defaults(fn=fn)
        return p

    add("download", cmd_download, "fetch and verify the dataset (the demo generates it)").add_argument(
        "--out", type=Path, required=True, help="dataset root to create")
    p = add("splits", cmd_splits, "validate published splits or draw seeded ones")
    p.add_argument("--data", type=Path, required=True, help="dataset root")
    p.add_argument("--out", type=Path, required=True, help="directory of <split>/{labeled,unlabeled,val}.txt")
    add("weights", cmd_weights, "fetch and verify the ImageNet backbone weights").add_argument(
        "--out", type=Path, required=True, help="directory for <backbone>.pth")
    p = add("train", cmd_train, "train one split (resumes from --out/last.pt)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split-dir", type=Path, required=True, help="data/splits/<split>")
    p.add_argument("--weights", type=Path, help="backbone weights file from `ddfp weights`")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoint, train log)")
    p = add("evaluate", cmd_evaluate, "evaluate a checkpoint on the validation list")
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="metrics JSON")
    p = add("report", cmd_report, "tabulate the metrics of every split")
    p.add_argument("--metrics", type=Path, default=Path("metrics"), help="directory of <split>.json")
    p.add_argument("--out", type=Path, default=Path("reports/results.md"))
    add("submit", _not_yet("submit"), "submit training to SLURM (not yet available)")
    add("sweep", _not_yet("sweep"), "Optuna sweep of eps and the threshold (not yet available)")
    p = add("bench", cmd_bench, "benchmarks that print JSON")
    p.add_argument("what", choices=["step"], help="step: median step time per method")
    p.add_argument("--settings", default="demo,paper", help="comma list of: demo, paper")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one-line JSON")
    p = sub.add_parser("profile", help="switch params.yaml to a named profile",
                       description="rewrite params.yaml as profiles/<name>.yaml resolved")
    p.add_argument("name")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.set_defaults(fn=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, DownloadError) as err:
        if os.environ.get("DDFP_DEBUG"):
            raise
        print(f"ddfp {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
