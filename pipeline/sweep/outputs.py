"""What a sweep leaves in reports/sweep/<study>/: best_params.yaml (nested, ready to merge into
params.yaml), trials.csv (Optuna's trials dataframe) and figures: the optimisation history, the
parameter importances (from 2 complete trials on) and the landscape of the first two searched values
(scatter coloured by val mIoU; pruned and failed trials marked)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from pipeline.figures import plt, save  # pyplot on the Agg backend
from pipeline.params import Config, set_dotted


def summarise(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                  TrialState.FAIL, TrialState.RUNNING,
                                                                  TrialState.WAITING)}
    out: dict[str, Any] = {"study": study.study_name, "n_trials": len(trials), "states": states}
    if states["COMPLETE"]:
        best = study.best_trial
        out.update(best_trial=best.number, best_value=best.value, best_params=best.params)
    return out


def best_params_yaml(cfg: Config, summary: dict[str, Any]) -> str:
    tree: dict[str, Any] = {}
    for key, value in summary["best_params"].items():
        set_dotted(tree, key, value)
    head = (f"# Best of study '{summary['study']}' (profile {cfg.profile}): trial {summary['best_trial']}, "
            f"val mIoU {summary['best_value']:.2f} on split {cfg.sweep_split} over the "
            "sweep's schedule.\n# Merge into params.yaml (same nested keys), then `dvc repro`.\n")
    return head + yaml.safe_dump(tree, sort_keys=False)


def _landscape(study: optuna.Study, keys: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    xy = lambda ts: ([t.params.get(keys[0]) for t in ts], [t.params.get(keys[1]) for t in ts])  # noqa: E731
    if done:
        points = ax.scatter(*xy(done), c=[t.value for t in done], cmap="viridis", s=60, edgecolors="k")
        fig.colorbar(points, ax=ax, label="val mIoU (final)")
    for state, marker in ((TrialState.PRUNED, "x"), (TrialState.FAIL, "+")):
        rest = [t for t in trials if t.state == state and keys[0] in t.params and keys[1] in t.params]
        if rest:
            ax.scatter(*xy(rest), marker=marker, c="grey", s=50, label=state.name.lower())
    dists = trials[0].distributions if trials else {}
    for key, setter in ((keys[0], ax.set_xscale), (keys[1], ax.set_yscale)):
        if getattr(dists.get(key), "log", False):
            setter("log")
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1])
    ax.set_title(f"{study.study_name}: {len(done)} complete of {len(trials)} trials")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    return save(fig, path)


def _optuna_figure(plot, study: optuna.Study, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot(study)
    return save(ax.figure, path)


def write_outputs(cfg: Config, study: optuna.Study, out: Path) -> tuple[dict[str, Any], list[Path]]:
    """Write the report files; returns the study summary and the files written."""
    from optuna.visualization import matplotlib as vis

    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(study)
    files = []
    csv = out / "trials.csv"
    study.trials_dataframe().to_csv(csv, index=False)
    files.append(csv)
    if "best_params" in summary:
        best = out / "best_params.yaml"
        best.write_text(best_params_yaml(cfg, summary))
        files.append(best)
    if summary["states"]["COMPLETE"]:
        files.append(_optuna_figure(vis.plot_optimization_history, study, out / "history.png"))
    if summary["states"]["COMPLETE"] >= 2:  # importances need at least two complete trials
        try:
            files.append(_optuna_figure(vis.plot_param_importances, study, out / "importances.png"))
        except (RuntimeError, ValueError) as err:  # e.g. every complete trial has the same value
            print(f"parameter importances skipped: {err}")
    keys = list(cfg.sweep.params)
    if len(keys) >= 2:
        files.append(_landscape(study, keys[:2], out / "landscape.png"))
    return summary, files


__all__ = ["write_outputs", "summarise", "best_params_yaml"]
