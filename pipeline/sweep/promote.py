"""`ddfp sweep promote`: the best trial's values into params.yaml, or into a DVC experiment.

params.yaml is edited as a round trip (ruamel.yaml), so its comments, key order and layout stay as
they were and only the promoted values change; the result is validated as a config before it is
written. `--exp` leaves the file alone and runs `dvc exp run -S key=value ...` instead, which trains
the experiment in the workspace and records it beside the committed results.
"""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState
from ruamel.yaml import YAML
from ruamel.yaml.util import load_yaml_guess_indent

from pipeline.errors import JobError, UsageError
from pipeline.files import write_text_atomic
from pipeline.params import Config, from_mapping, set_dotted
from pipeline.secrets import redact
from pipeline.sweep.study import open_storage, storage_url

MISSING = "<absent>"
DVC_PARAMS = Path("params.yaml")  # the file `dvc exp run -S key=value` sets without a file prefix


def best_values(cfg: Config) -> dict[str, Any]:
    """The best complete trial's sampled values of the study sweep.study; UsageError without one."""
    where = f"study {cfg.sweep.study!r} in {redact(storage_url(cfg))}"
    try:
        study = optuna.load_study(study_name=cfg.sweep.study, storage=open_storage(cfg))
    except KeyError:
        raise UsageError(f"{where}: no such study (run `ddfp sweep --study {cfg.sweep.study}` first)") from None
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        states = ", ".join(f"{s.name} {n}" for s in TrialState if (n := sum(t.state == s for t in trials)))
        raise UsageError(f"{where} has no finished (COMPLETE) trial ({states or 'no trials'}): nothing to promote; "
                         "run or continue the sweep first")
    return dict(study.best_trial.params)


def _round_trip(text: str) -> YAML:
    rt = YAML()  # round-trip mode: comments, order and quoting survive
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a long line
    # Lists as the file indents them: flush with their key as `ddfp profile` (PyYAML) writes them, or
    # indented as in a hand-written file; ruamel applies one style to the whole file.
    _, sequence, offset = load_yaml_guess_indent(text)
    rt.indent(mapping=2, sequence=sequence or 2, offset=offset or 0)
    # ruamel writes None as an empty value; params.yaml spells it `null`, as PyYAML does.
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def promote_params(path: Path, values: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Set each dotted key of `values` in the params file at `path`; returns (key, old, new) rows."""
    text = path.read_text()
    rt = _round_trip(text)
    tree = rt.load(text)  # ruamel's mappings are dicts: the config's own dotted setter edits them in place
    old = from_mapping(yaml.safe_load(text)).flat()
    rows = [(key, old.get(key, MISSING), value) for key, value in values.items()]
    for key, value in values.items():
        set_dotted(tree, key, value)
    out = io.StringIO()
    rt.dump(tree, out)
    text = out.getvalue()
    from_mapping(yaml.safe_load(text))  # ConfigError (nothing written) if a value does not fit
    write_text_atomic(path, text)
    return rows


def exp_command(values: dict[str, Any], params_file: Path = DVC_PARAMS) -> list[str]:
    """`dvc exp run -S [file:]key=value ...` setting each value (YAML scalars, as dvc parses them)."""
    prefix = "" if params_file == DVC_PARAMS else f"{params_file}:"
    sets = [f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in values.items()]
    return ["dvc", "exp", "run", *(arg for s in sets for arg in ("-S", s))]


def run_exp(cmd: list[str], cwd: Path) -> None:
    """Print the command, then run it with this environment's DVC (`dvc` need not be on PATH)."""
    print(shlex.join(cmd), flush=True)
    code = subprocess.run([sys.executable, "-m", *cmd], cwd=cwd).returncode
    if code:
        raise JobError(f"{shlex.join(cmd)} exited with {code}")


def show(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


__all__ = ["best_values", "promote_params", "exp_command", "run_exp", "show"]
