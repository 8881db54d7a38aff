"""The model of a finished run, apart from its resume state: what DVC caches and what evaluate,
predict and the MLflow model read.

A training checkpoint (last.pt) holds both networks, the flow, the optimisers' state and the RNG
states: about three times the network a run reports. Caching one per retrain fills DVC caches
(about 0.8 GB a run on ResNet-101), and no later stage needs the resume state. The export keeps the
network the run reports (eval.model; the student for the supervised baseline), the configuration it
was trained with and what it recorded over training (loss and evaluation curves, its MLflow run),
and writes the curves beside it as JSON for DVC's plots, where experiments keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddfp.config import ConfigError
from ddfp.methods import reported_model
from ddfp.model.deeplab import build_model
from pipeline.errors import DataError
from pipeline.files import atomic_write, write_json_atomic
from pipeline.params import Config, stored_config
from pipeline.train import checkpoint
from pipeline.train.distributed import SINGLE

MODEL = "model.pt"
# What an export holds. run_dir: the training run's folder (its resume state and tracking spool).
MODEL_KEYS = ("config", "model", "weights", "epoch", "iteration", "history", "evals", "run_id", "run_dir")


def trained_config(state: dict[str, Any], cfg: Config, today: tuple[str, ...] = ("eval",)) -> Config:
    """The configuration a run (checkpoint or export) was trained with, with cfg's sections `today`:
    what was trained decides the network, today's evaluation protocol (and tracking, for the evaluate
    stage) what is measured."""
    current = cfg.to_dict()
    return stored_config({**state["config"], **{k: current[k] for k in today}})


def inference_state(state: dict[str, Any], cfg: Config, run_dir: Path) -> dict[str, Any]:
    """A finished training checkpoint's export: the network cfg's eval.model reports, and the record."""
    if not state.get("done"):
        raise DataError(f"{run_dir / 'last.pt'}: training has not finished (resume it with `ddfp train`)")
    trained = trained_config(state, cfg)
    name = reported_model(trained)
    return {"config": state["config"], "model": name, "weights": state[name], "epoch": state["epoch"],
            "iteration": state["iteration"], "history": state["history"], "evals": state["evals"],
            "run_id": state.get("run_id"), "run_dir": str(run_dir)}


def load_model(path: Path, cfg: Config) -> dict[str, Any]:
    """An export (model.pt), or a finished training checkpoint (last.pt) exported on the fly, so
    that evaluate and predict take either; a DataError names the file when it is neither."""
    state = checkpoint.load(path, keys=())
    if all(k in state for k in MODEL_KEYS):
        return state
    if all(k in state for k in checkpoint.KEYS):
        return inference_state(state, cfg, path.parent)
    raise DataError(f"{path}: cannot load it (neither a model of `ddfp train --export` nor a training "
                    f"checkpoint: missing {', '.join(k for k in MODEL_KEYS if k not in state)})")


@dataclass(frozen=True)
class TrainedNetwork:
    """A run's reported network on its device, the configuration it was trained with (today's
    evaluation protocol merged in) and the export it came from."""

    model: nn.Module
    trained: Config
    state: dict[str, Any]
    device: torch.device

    @property
    def name(self) -> str:
        return self.state["model"]  # teacher or student


def load_network(path: Path, cfg: Config, today: tuple[str, ...] = ("eval",)) -> TrainedNetwork:
    """The one way to load a trained network (evaluate, predict, diagnostics): model.pt or a finished
    last.pt, its training configuration, the device of cfg.run.device. Refused when the configuration
    asks for the other network: the export of a train stage follows eval.model, so `dvc repro` writes
    it again when eval.model changes."""
    state = load_model(path, cfg)
    trained = trained_config(state, cfg, today)
    if reported_model(trained) != state["model"]:
        raise ConfigError(f"eval.model is {trained.eval.model} but {path} holds the {state['model']}: run the "
                          "train stage again (`dvc repro` does), or pass the run's last.pt")
    model = build_model(trained.model, trained.spec.num_classes)
    model.load_state_dict(state["weights"])
    device = SINGLE.device(cfg.run.device)
    return TrainedNetwork(model.to(device), trained, state, device)


def curves(export: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The loss rows, and the evaluations with `val_miou` set to the reported network's (the one
    the metrics report); an evaluation that did not score it (before the teacher trains) is left out."""
    key = f"val_miou_{export['model']}"
    val = [{"epoch": e["epoch"], "iteration": e["iteration"], "val_miou": e[key],
            **{k: v for k, v in e.items() if k.startswith("val_miou_")}} for e in export["evals"] if key in e]
    return rectangular(export["history"]), rectangular(val)


def rectangular(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with every key (null where a row lacks one: the perturbation's values appear only
    once it starts). DVC's plots fail on a file whose later rows have keys the first one lacks."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k) for k in keys} for row in rows]


def export_run(cfg: Config, run_dir: Path, out_dir: Path) -> Path:
    """Write out_dir/model.pt and its curves (train_log.json, val_log.json) from run_dir/last.pt."""
    export = inference_state(checkpoint.load(run_dir / "last.pt"), cfg, run_dir)
    with atomic_write(out_dir / MODEL) as fh:
        torch.save(export, fh)
    history, val = curves(export)
    write_json_atomic(history, out_dir / "train_log.json")
    write_json_atomic(val, out_dir / "val_log.json")
    return out_dir / MODEL


__all__ = ["MODEL", "MODEL_KEYS", "curves", "export_run", "inference_state", "load_model", "rectangular"]
