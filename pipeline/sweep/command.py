"""The `ddfp sweep` command line: run or continue a study, and its two subcommands.

  ddfp sweep [--n-trials N] [--workers N] [--study NAME] ...   run or continue the study
  ddfp sweep dashboard [--host H] [--port P]                    optuna-dashboard on the storage
  ddfp sweep promote [--study NAME] [--exp]                     best values into params.yaml

Every form finds the storage the same way (sweep.storage, else $OPTUNA_STORAGE, else the project's
sqlite file; journal:PATH for a journal file) and shows it only redacted. Optuna, torch and the
dashboard load only in the command that uses them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from pipeline import params
from pipeline.cli_args import LAYOUT, config_args, load_config
from pipeline.params import Config
from pipeline.stages.inputs import INPUTS_RULE

AddCommand = Callable[[str, Callable, str], argparse.ArgumentParser]


def sweep_config(args: argparse.Namespace) -> Config:
    """The config with the command line's sweep flags applied (those given)."""
    flags = {"sweep.n_trials": getattr(args, "n_trials", None), "sweep.workers": getattr(args, "workers", None),
             "sweep.study": args.study}
    return params.replace(load_config(args), {k: v for k, v in flags.items() if v is not None})


def cmd_sweep(args: argparse.Namespace) -> None:
    """Run or continue an Optuna study (sweep.n_trials in total), then write reports/sweep/<study>/."""
    from pipeline.stages.inputs import resolve_inputs
    from pipeline.sweep.launch import run_sweep
    from pipeline.sweep.study import SweepPaths

    cfg = sweep_config(args)
    split = cfg.sweep_split
    inputs = resolve_inputs(cfg, [split], data=args.data, weights=args.weights,
                            splits_dir=args.split_dir.parent if args.split_dir else args.splits_dir)
    split_dir = args.split_dir or inputs.splits / split
    paths = SweepPaths(inputs.data, split_dir, inputs.weights, args.runs / cfg.sweep.study,
                       args.reports / cfg.sweep.study)
    summary = run_sweep(cfg, paths)  # a SweepError (a JobError) exits 4 through main
    print(json.dumps({**summary, "reports": str(paths.reports)}, indent=2))


def cmd_dashboard(args: argparse.Namespace) -> None:
    """optuna-dashboard on the sweep's storage until Ctrl-C (wsgiref, one host: a local viewer)."""
    import warnings

    import optuna
    import optuna_dashboard

    from pipeline.secrets import redact
    from pipeline.sweep.study import open_storage, storage_url

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the storage's heartbeat option
    cfg = load_config(args)
    storage = open_storage(cfg)  # fails here, with a redacted message, if the storage cannot be opened
    print(f"optuna-dashboard on {redact(storage_url(cfg))}: http://{args.host}:{args.port}/dashboard/ "
          "(Ctrl-C stops it)", flush=True)
    # Bottle's server loop takes Ctrl-C as the way to stop it and returns: the command exits 0.
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)


def cmd_promote(args: argparse.Namespace) -> None:
    """The best trial's values into params.yaml (old -> new), or `dvc exp run -S ...` with --exp."""
    from pipeline.sweep.promote import best_values, exp_command, promote_params, run_exp, show

    values = best_values(sweep_config(args))
    if args.exp:
        run_exp(exp_command(values, args.params), Path.cwd())
        return
    for key, old, new in promote_params(args.params, values):
        print(f"{key}: {show(old)} -> {show(new)}")
    print(f"{args.params}: updated; `dvc repro` retrains with these values")


def add_sweep_parser(add: AddCommand) -> None:
    """`ddfp sweep` and its subcommands, on the subparsers of the router (`add` makes one command)."""
    p = add("sweep", cmd_sweep, "Optuna sweep of eps and the threshold (the `sweep` params section)")
    p.add_argument("--n-trials", type=int, help="the study's total trials (sweep.n_trials)")
    p.add_argument("--workers", type=int, help="parallel workers: processes, or SLURM array tasks (sweep.workers)")
    p.add_argument("--study", help="study name (sweep.study); storage: sweep.storage or $OPTUNA_STORAGE")
    p.add_argument("--data", type=Path, help=f"dataset root, only read (default: {INPUTS_RULE})")
    p.add_argument("--splits-dir", type=Path, help="holds <split>/labeled.txt ..., only read (default: as --data)")
    p.add_argument("--split-dir", type=Path, help="the split's own folder, only read (default: <splits-dir>/<sweep.split>)")
    p.add_argument("--weights", type=Path, help="<backbone>.pth, only read (default: as --data)")
    p.add_argument("--runs", type=Path, default=LAYOUT["runs"] / "sweep", help="trial directories <runs>/<study>/trial_<n>")
    p.add_argument("--reports", type=Path, default=LAYOUT["reports"] / "sweep", help="outputs in <reports>/<study>/")
    # Optional: a bare `ddfp sweep [options]` runs the study. A subcommand's options follow its name.
    sub = p.add_subparsers(dest="sweep_command", metavar="{dashboard,promote}",
                           help="a subcommand instead of running the study (`ddfp sweep SUBCOMMAND -h`)")

    def subcommand(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_, description=help_)
        config_args(q)
        q.set_defaults(fn=fn)
        return q

    q = subcommand("dashboard", cmd_dashboard, "optuna-dashboard on the sweep's storage (sweep.storage, "
                   "$OPTUNA_STORAGE or sqlite:///optuna.db), until Ctrl-C")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this host only)")
    q.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    q = subcommand("promote", cmd_promote, "write the study's best values into the params file (comments kept), "
                   "or try them as a DVC experiment with --exp")
    q.add_argument("--study", help="study name (default: sweep.study)")
    q.add_argument("--exp", action="store_true", help="run `dvc exp run -S key=value ...` instead of editing the file")


__all__ = ["add_sweep_parser", "cmd_sweep", "cmd_dashboard", "cmd_promote", "sweep_config"]
