"""`ddfp submit`: `dvc repro` with the training and evaluation stages fanned out, to SLURM as job
arrays or to local worker processes (pipeline.launchers), leaving DVC's lock and cache as a
sequential `dvc repro` leaves them.

1. `dvc repro` of the stages before training (download, splits, weights), here: they are cheap or
   need the network, which compute nodes often lack.
2. `dvc status` names the train@ stages that changed. Each one's command is read from dvc.yaml and
   parsed by the CLI's own parser, so a job trains exactly what `dvc repro` would run there.
3. Those runs go to the launcher: on SLURM one job array, at most slurm.array_parallelism at once (a
   run whose job is still queued from an earlier `--no-wait` is waited for, not submitted again);
   locally -j worker processes. A finished checkpoint is taken as it is.
4. `dvc commit` records each finished train stage: the same lock entry (deps, params, outs) and
   cache entry that `dvc repro` writes after running the stage's command itself.
5. `dvc status` now names the evaluate@ stages that changed (new models, or eval.* edited), and they
   go to the launcher the same way (one array of one-process jobs on SLURM); `dvc commit` records them.
6. `dvc repro` runs the rest: the report. Nothing trains or evaluates in this process; a stage whose
   job failed is not reached: a failed job ends the command first, naming it.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from pipeline.errors import DataError, JobError, UsageError
from pipeline.params import Config, from_mapping, replace
from pipeline.secrets import redact
from pipeline.train.trainer import RunPaths

if TYPE_CHECKING:
    from pipeline.launchers import Launcher

# The stages the train stages depend on, run before anything is submitted.
BEFORE_TRAINING = ("download", "splits", "weights")
PROGRAM = "ddfp"  # every stage's command is `ddfp <stage> ...`
TRAIN_STAGE = "train"
EVALUATE_STAGE = "evaluate"
# The sections the command's own config gives every job (--set of them is allowed): DVC records none.
OURS = ("run", "slurm", "tracking")
# A stage's argv (without "ddfp") -> (its config, its arguments): parsed by the CLI's own parser.
Invocation = Callable[[list[str]], tuple[Config, argparse.Namespace]]


def dvc(root: Path, *args: str, capture: bool = False) -> str:
    """Run `dvc <args>` in root; its output streams to the user unless captured; DataError on failure."""
    done = subprocess.run(["dvc", *args], cwd=root, text=True, capture_output=capture)
    if done.returncode:
        detail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] if capture else []
        raise DataError(redact(f"`dvc {' '.join(args)}` failed (exit {done.returncode})"
                               + (f": {detail[0]}" if detail else "")))
    return done.stdout or ""


def matrix_stages(cfg: Config, stage: str) -> dict[str, dict[str, str]]:
    """<stage>@<split>-<method> -> its matrix item: the names DVC gives a split x method stage."""
    return {f"{stage}@{split}-{method}": {"split": split, "method": method}
            for split in cfg.data.splits for method in cfg.methods}


def changed(root: Path, stages: list[str]) -> list[str]:
    """The stages among `stages` that `dvc status` reports as changed (never run, or stale)."""
    status = json.loads(dvc(root, "status", "--json", *stages, capture=True) or "{}")
    return [s for s in stages if s in status]


def stage_argv(root: Path, items: list[dict[str, str]], stage: str) -> list[list[str]]:
    """The stage's command (`ddfp <stage> ...`, without `ddfp`) for each matrix item, as DVC
    interpolates it: ${item.<key>} from the item, any other ${a.b} from params.yaml (both read once)."""
    if not items:
        return []
    template = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["cmd"]
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
        if words[:2] != [PROGRAM, stage]:
            raise UsageError(f"dvc.yaml: the {stage} stage runs `{' '.join(words[:2])}`, not `ddfp {stage}`")
        return words[1:]

    return [argv(item) for item in items]


def check_no_overrides(ours: dict[str, Any], theirs: dict[str, Any], stage: str) -> None:
    """The submitted config may differ from the stage's only where DVC does not look (run, slurm,
    tracking): a --set of a recorded value would leave the outputs disagreeing with dvc.lock."""
    diff = sorted(k for k in ours.keys() | theirs.keys() if k != "train.method" and ours.get(k) != theirs.get(k))
    if diff:
        raise UsageError(f"{diff[0]}: differs from params.yaml ({theirs.get(diff[0])!r}), which {stage} records; "
                         "edit params.yaml instead (`ddfp submit` may only change run, slurm and tracking values)")


def run_submit(cfg: Config, root: Path, invocation: Invocation, block: bool = True,
               status_every: float | None = 60.0, launcher: Launcher | None = None) -> list[str]:
    """Bring the pipeline up to date with the trainings and evaluations run by `launcher` (default:
    SLURM); returns the stages recorded.

    cfg: the command's config (params.yaml, with --set of run / slurm / tracking values): it gives
    the SLURM resources and tracking; each stage runs with its own config. status_every: seconds
    between status tables while waiting (None: none)."""
    from pipeline.launchers import launcher as named_launcher

    launcher = launcher or named_launcher("slurm")
    if not block and not launcher.detached:
        raise UsageError(f"--no-wait: the stages run {launcher.where}, which end with this command; leave --no-wait out")
    dvc(root, "repro", *BEFORE_TRAINING)
    check_evaluation_values(cfg, root, invocation)
    configs, runs, exports = plan_trainings(cfg, root, invocation, launcher)
    print(f"{len(runs)} train stage(s) to bring up to date {launcher.where}: {', '.join(runs) or 'none'}",
          file=sys.stderr)
    show = _status(runs, status_every)
    try:
        trained = launcher.train(cfg, runs, configs, block, show)
    except JobError as err:
        _commit(root, list(getattr(err, "finished", {})), configs, runs, exports)  # what finished is kept
        raise
    _commit(root, list(trained), configs, runs, exports)
    if not block and len(trained) < len(runs):
        print("submitted; `ddfp submit` again waits for these jobs (it submits nothing they cover), records "
              "them in dvc.lock and runs the evaluations", file=sys.stderr)
        return list(trained)
    evaluated = _evaluate(cfg, root, invocation, launcher, status_every)
    dvc(root, "repro")
    return [*trained, *evaluated]


def _status(runs: dict[str, RunPaths], status_every: float | None) -> Callable[[], None] | None:
    """The waiter's on_poll: a status table of the runs every status_every seconds (None: none)."""
    from pipeline.status import every

    if status_every is None:
        return None
    show = every(status_every)
    return lambda: show(runs)


def plan_trainings(cfg: Config, root: Path, invocation: Invocation, launcher: Launcher) -> tuple[
        dict[str, Config], dict[str, RunPaths], dict[str, Path | None]]:
    """Each changed train stage's config (its own, with the command's run, slurm and tracking), run
    paths and --export, from its command in dvc.yaml."""
    from pipeline.stages.train import run_paths

    items = matrix_stages(cfg, TRAIN_STAGE)
    todo = changed(root, list(items))
    configs, runs, exports = {}, {}, {}
    for stage, argv in zip(todo, stage_argv(root, [items[stage] for stage in todo], TRAIN_STAGE)):
        stage_cfg, args = invocation(argv)
        # The same method on both sides: the values a run depends on are its method's (Config.training_values).
        ours = replace(cfg, {"train.method": stage_cfg.train.method}).training_values()
        check_no_overrides(ours, stage_cfg.training_values(), stage)
        if not configs and launcher.stage_launcher not in (None, stage_cfg.run.launcher):
            print(f"note: run.launcher is {stage_cfg.run.launcher} in params.yaml, so a plain `dvc repro` here "
                  f"would train on this machine; on a login node set it to {launcher.stage_launcher}",
                  file=sys.stderr)
        configs[stage] = from_mapping({**stage_cfg.to_dict(), **{k: cfg.to_dict()[k] for k in OURS}})
        runs[stage] = run_paths(stage_cfg, args.data, args.split_dir, args.out, args.weights)
        exports[stage] = args.export
    return configs, runs, exports


def evaluation_values(cfg: Config) -> dict[str, Any]:
    """What dvc.yaml's evaluate stage records as params: eval.* and run.device."""
    return {k: v for k, v in cfg.flat().items() if k.startswith("eval.") or k == "run.device"}


def check_evaluation_values(cfg: Config, root: Path, invocation: Invocation) -> None:
    """Before anything trains: a --set of a value the evaluations record is refused (as for training)."""
    items = list(matrix_stages(cfg, EVALUATE_STAGE).items())[:1]
    for (stage, _), argv in zip(items, stage_argv(root, [item for _, item in items], EVALUATE_STAGE)):
        check_no_overrides(evaluation_values(cfg), evaluation_values(invocation(argv)[0]), stage)


def _evaluate(cfg: Config, root: Path, invocation: Invocation, launcher: Launcher,
              status_every: float | None) -> list[str]:
    """Run the changed evaluate stages with the launcher and record the ones that finished."""
    from pipeline.launchers import Evaluation

    items = matrix_stages(cfg, EVALUATE_STAGE)
    todo = changed(root, list(items))
    evals, configs = {}, {}
    for stage, argv in zip(todo, stage_argv(root, [items[stage] for stage in todo], EVALUATE_STAGE)):
        stage_cfg, args = invocation(argv)
        tree = {**stage_cfg.to_dict(), **{k: cfg.to_dict()[k] for k in OURS}}
        tree["run"] = {**tree["run"], "device": stage_cfg.run.device}  # a param of the stage
        configs[stage] = from_mapping(tree)
        evals[stage] = Evaluation(args.ckpt, args.data, args.split_dir, args.out)
    print(f"{len(todo)} evaluate stage(s) to bring up to date {launcher.where}: {', '.join(todo) or 'none'}",
          file=sys.stderr)
    try:
        done = launcher.evaluate(cfg, evals, configs, None)
    except JobError as err:
        _record(root, list(getattr(err, "finished", {})))
        raise
    _record(root, list(done))
    return list(done)


def _record(root: Path, stages: list[str]) -> None:
    if stages:
        dvc(root, "commit", "--force", *stages)


def _commit(root: Path, stages: list[str], configs: dict[str, Config], runs: dict[str, RunPaths],
            exports: dict[str, Path | None]) -> None:
    """Write each finished stage's model (what its command writes after training), then record them."""
    from pipeline.train.export import export_run

    for stage in stages:
        if exports[stage] is not None:
            export_run(configs[stage], runs[stage].out_dir, root / exports[stage])
    _record(root, stages)


__all__ = ["BEFORE_TRAINING", "Invocation", "changed", "matrix_stages", "run_submit", "stage_argv"]
