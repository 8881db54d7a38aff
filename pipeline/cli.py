"""The `ddfp` console script: one subcommand per pipeline stage.

Paths go on the command line, values in params.yaml (or a named --profile), overrides with --set.
An expected failure prints one line and exits with its documented code (`ddfp --help`); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pipeline import params
from pipeline.cli_args import LAYOUT, config_args, load_config, parse_seeds_of
from pipeline.errors import EXIT_INTERRUPTED, exit_code_help, failure
from pipeline.evidence.arms import ARMS, CURVE_ARMS
from pipeline.params import Config
from pipeline.secrets import redact
from pipeline.stages.inputs import INPUTS_RULE
from pipeline.sweep.command import add_sweep_parser

if TYPE_CHECKING:  # torch loads only in the commands that train
    from pipeline.train.trainer import RunPaths

CKPT_HELP = "a trained model: models/<split>/<method>/model.pt (`ddfp train --export`), or a finished <run>/last.pt"


def cmd_profile(args: argparse.Namespace) -> None:
    """Rewrite params.yaml as the full config of a named profile (the whole pipeline follows)."""
    print(params.write_profile(args.name, args.params))


def cmd_download(args: argparse.Namespace) -> None:
    from pipeline.stages.download import run_download

    run_download(load_config(args), args.out)


def cmd_splits(args: argparse.Namespace) -> None:
    from pipeline.stages.splits import run_splits

    summary = run_splits(load_config(args), args.data, args.out)
    print(json.dumps(summary, indent=2))


def cmd_weights(args: argparse.Namespace) -> None:
    from pipeline.stages.weights import run_weights

    print(run_weights(load_config(args), args.out))


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline.stages.train import run_train

    summary = run_train(*train_invocation(args))
    if summary is not None:
        print(json.dumps(summary.scalars(), indent=2))


def train_invocation(args: argparse.Namespace | list[str]) -> tuple[Config, RunPaths, Path | None]:
    """What `ddfp train` trains with these arguments (or argv: a train stage's command in dvc.yaml),
    and where its model goes."""
    from pipeline.stages.train import run_paths

    args = build_parser().parse_args(args) if isinstance(args, list) else args
    cfg = load_config(args)
    return cfg, run_paths(cfg, args.data, args.split_dir, args.out, args.weights), args.export


def stage_invocation(argv: list[str]) -> tuple[Config, argparse.Namespace]:
    """A stage's command from dvc.yaml (without `ddfp`), parsed as `dvc repro` would have it parsed:
    its config and its arguments."""
    args = build_parser().parse_args(argv)
    return load_config(args), args


def cmd_submit(args: argparse.Namespace) -> None:
    from pipeline.launchers import launcher
    from pipeline.repro import run_submit

    chosen = launcher(args.launcher, args.jobs)
    recorded = run_submit(load_config(args), Path.cwd(), stage_invocation, not args.no_wait, args.status_every,
                          chosen)
    print(json.dumps({"recorded": recorded}))


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline.predict import run_predict

    print(json.dumps(run_predict(load_config(args), args.ckpt, args.images, args.out), indent=2))


def cmd_status(args: argparse.Namespace) -> None:
    from pipeline.status import find_runs, status_table

    print(status_table(find_runs(args.runs), Path.cwd()))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pipeline.stages.evaluate import run_evaluate

    metrics = run_evaluate(load_config(args), args.ckpt, args.data, args.split_dir, args.out)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))


def cmd_report(args: argparse.Namespace) -> None:
    from pipeline.stages.report import write_report

    print(write_report(load_config(args), args.metrics, args.out))


def cmd_readme(args: argparse.Namespace) -> None:
    from pipeline.evidence.readme import run_readme

    print(run_readme(args.readme, args.check))


def cmd_summary(args: argparse.Namespace) -> None:
    """The split x method table and where the report, figures and MLflow runs are (end of `make demo`)."""
    from pipeline.stages.report import summary_text
    from pipeline.tracking.identity import tracking_uri

    cfg = load_config(args)
    print(redact(summary_text(cfg, args.metrics, args.reports, tracking_uri(cfg))))


def cmd_mlflow_picture(args: argparse.Namespace) -> None:
    from pipeline.evidence.mlflow_picture import take_picture
    from pipeline.tracking.identity import tracking_uri

    take_picture(args.metrics, args.tracking_uri or tracking_uri(load_config(args)), args.out)
    print(args.out)


def cmd_ablation(args: argparse.Namespace) -> None:
    from pipeline.evidence.ablation import run_ablation
    from pipeline.stages.inputs import resolve_inputs

    cfg = load_config(args)
    seeds, curve_seeds = ([int(x) for x in v.split(",") if x.strip()] for v in (args.seeds, args.curve_seeds))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    inputs = resolve_inputs(cfg, cfg.data.splits, data=args.data, splits_dir=args.splits_dir, weights=args.weights)
    result = run_ablation(cfg, inputs.data, inputs.splits, inputs.weights, args.work, args.out, seeds, arms,
                          curve_seeds, commit=args.commit, jobs=args.jobs, seeds_of=parse_seeds_of(args.seeds_of),
                          curve_arms=[a.strip() for a in args.curve_arms.split(",") if a.strip()],
                          report_only=args.report_only)
    print(json.dumps(result["miou"], indent=2))
    print(result["provenance"])


def cmd_sensitivity(args: argparse.Namespace) -> None:
    from pipeline.evidence.sensitivity import gather, write

    print(write(gather(args.split, args.runs, args.ablation), args.split, args.out).to_string(index=False))


def cmd_bench(args: argparse.Namespace) -> None:
    from pipeline.evidence.bench import run_bench

    result = run_bench(load_config(args), args.what, args.settings, args.repeats)
    print(json.dumps(result, indent=None if args.json else 2))


def _version() -> str:
    try:
        return importlib.metadata.version("ddfp")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddfp", description=__doc__.splitlines()[0], epilog=exit_code_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        config_args(p)
        p.set_defaults(fn=fn)
        return p

    add("download", cmd_download, "fetch and verify the dataset (the demo generates it)").add_argument(
        "--out", type=Path, required=True, help="dataset root to create; archives are kept beside it in archives/")
    p = add("splits", cmd_splits, "validate published splits or draw seeded ones")
    p.add_argument("--data", type=Path, required=True, help="dataset root")
    p.add_argument("--out", type=Path, required=True, help="directory of <split>/{labeled,unlabeled,val}.txt")
    add("weights", cmd_weights, "fetch and verify the ImageNet backbone weights").add_argument(
        "--out", type=Path, required=True, help="directory for <backbone>.pth")
    p = add("train", cmd_train, "train one split (resumes from --out/last.pt)")
    p.add_argument("--data", type=Path, required=True, help="dataset root (from `ddfp download`)")
    p.add_argument("--split-dir", type=Path, required=True, help="data/splits/<split> (from `ddfp splits`)")
    p.add_argument("--weights", type=Path, help="backbone weights file from `ddfp weights`")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoint, train log)")
    p.add_argument("--export", type=Path, help="folder for the finished run's model.pt and curves (what DVC caches)")
    p = add("evaluate", cmd_evaluate, "evaluate a checkpoint on the validation list")
    p.add_argument("--ckpt", type=Path, required=True, help=CKPT_HELP)
    p.add_argument("--data", type=Path, required=True, help="dataset root (from `ddfp download`)")
    p.add_argument("--split-dir", type=Path, required=True, help="data/splits/<split>: its val.txt is evaluated")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON")
    p = add("predict", cmd_predict, "the reported model on a folder of images: VOC-palette PNGs and overlays")
    p.add_argument("--ckpt", type=Path, required=True, help=CKPT_HELP)
    p.add_argument("--images", type=Path, required=True, help="folder of images (jpg, png, ...)")
    p.add_argument("--out", type=Path, required=True, help="folder for <stem>.png and <stem>_overlay.png")
    p = add("report", cmd_report, "tabulate the metrics of every split")
    p.add_argument("--metrics", type=Path, default=LAYOUT["metrics"], help="directory of <split>/<method>.json")
    p.add_argument("--out", type=Path, default=LAYOUT["reports"] / "results.md", help="the Markdown table to write")
    p = add("mlflow-picture", cmd_mlflow_picture, "screenshot of the MLflow UI comparing the evaluated runs")
    p.add_argument("--metrics", type=Path, default=LAYOUT["metrics"], help="holds the evaluate stage's *.run.json")
    p.add_argument("--tracking-uri", help="store or server URL (default: tracking.uri, else as training)")
    p.add_argument("--out", type=Path, default=LAYOUT["reports"] / "mlflow_compare.png", help="the PNG to write")
    p = add("summary", cmd_summary, "print val mIoU per split and method, and where the report and MLflow runs are")
    p.add_argument("--metrics", type=Path, default=LAYOUT["metrics"], help="directory of <split>/<method>.json")
    p.add_argument("--reports", type=Path, default=LAYOUT["reports"], help="where `ddfp report` wrote results.md")
    p = sub.add_parser("readme", help="copy the reports into the README's include blocks",
                       description="rewrite each <!-- include reports/<file>.md --> block of the README")
    p.add_argument("--readme", type=Path, default=Path("README.md"), help="the file to update (default: README.md)")
    p.add_argument("--check", action="store_true", help="only fail (exit 3) if a block is stale")
    p.set_defaults(fn=cmd_readme)
    p = add("submit", cmd_submit, "dvc repro with the changed train, then evaluate stages as SLURM job arrays "
            "(or local worker processes: --local)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting (run it again to wait)")
    p.add_argument("--local", dest="launcher", action="store_const", const="local", default="slurm",
                   help="run the stages in worker processes on this machine instead of SLURM")
    p.add_argument("-j", "--jobs", type=positive_int, help="--local: worker processes, each with its own GPU "
                   "(default: one per visible GPU, else 1); without GPUs each gets cores / N threads")
    p.add_argument("--status-every", type=float, default=60.0, help="seconds between status tables while waiting")
    add("status", cmd_status, "one line per run: SLURM state, iteration, val mIoU, ETA, log").add_argument(
        "runs", nargs="*", type=Path, default=[LAYOUT["runs"]], help="run directories or folders of them (runs/)")
    add_sweep_parser(add)
    p = add("ablation", cmd_ablation, "the controlled ablation: every arm at the smallest split, the label curve")
    p.add_argument("--data", type=Path, help=f"dataset root, only read (default: {INPUTS_RULE})")
    p.add_argument("--splits-dir", type=Path, help="holds <split>/labeled.txt ..., only read (default: as --data)")
    p.add_argument("--weights", type=Path, help="<backbone>.pth, only read (default: as --data)")
    p.add_argument("--work", type=Path, default=LAYOUT["runs"] / "ablation", help="one run directory per arm/split/seed")
    p.add_argument("--out", type=Path, default=LAYOUT["reports"],
                   help="ablation.json, .md, .png and the per-run records ablation_runs/<arm>/<split>/seed<k>.json")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="train.seed values of every arm at the smallest split")
    p.add_argument("--curve-seeds", default="0,1,2", help="train.seed values of the main methods at the other splits")
    p.add_argument("--curve-arms", default=",".join(CURVE_ARMS), help="comma list of the arms of the label curve")
    p.add_argument("--seeds-of", action="append", default=[], metavar="ARM=SEEDS",
                   help="an arm's own seeds at the smallest split instead of --seeds (repeatable)")
    p.add_argument("--arms", "--methods", dest="arms",
                   default=",".join(ARMS), help="comma list of arms")
    p.add_argument("--commit", action="store_true", help="git-commit each run's record as it lands (resume elsewhere)")
    p.add_argument("--report-only", action="store_true",
                   help="write the reports from the records there are; train nothing (an ablation under way)")
    p.add_argument("-j", "--jobs", type=int, default=1,
                   help="train the missing runs in N local worker processes (one GPU each, or cores/N threads each)")
    p = sub.add_parser("sensitivity", help="gather benchmarks/sensitivity.sh's runs into reports/sensitivity.*")
    p.add_argument("--split", required=True, help="the split the runs trained on")
    p.add_argument("--runs", type=Path, required=True, help="one ablation work dir per setting")
    p.add_argument("--ablation", type=Path, required=True, help="the ablation's work dir (the default setting)")
    p.add_argument("--out", type=Path, required=True, help="where sensitivity.json and .md go")
    p.set_defaults(fn=cmd_sensitivity)
    p = add("bench", cmd_bench, "benchmarks that print JSON")
    p.add_argument("what", choices=["step", "profile"],
                   help="step: step time per method and the ratios; profile: milliseconds by part of the step")
    p.add_argument("--settings", default="demo,paper", help="comma list of: demo, paper, gpu, gpu16 (the last two need CUDA)")
    p.add_argument("--repeats", type=int, default=7,
                   help="rounds of timed steps (step: medians of the rounds; profile: profiled iterations)")
    p.add_argument("--json", action="store_true", help="one-line JSON")
    p = sub.add_parser("profile", help="switch params.yaml to a named profile",
                       description="rewrite params.yaml as pipeline/profiles/<name>.yaml resolved")
    p.add_argument("name", help="a profile of pipeline/profiles/: demo, smoke, pascal, cityscapes")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="file to rewrite (default: params.yaml)")
    p.set_defaults(fn=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (Exception, KeyboardInterrupt) as err:
        handled = None if os.environ.get("DDFP_DEBUG") else failure(err)
        if handled is None:
            raise
        message, code = handled
        kind = "" if code == EXIT_INTERRUPTED else "error: "
        print(redact(f"ddfp {args.command}: {kind}{message}"), file=sys.stderr)
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
