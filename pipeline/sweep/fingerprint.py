"""A study's fingerprint: what makes its trials comparable, recorded when the study is created.

Trials of one study are ranked against each other, so they must differ only in the searched values.
The fingerprint holds the search space, the schedule every trial shares (the training values of the
sweep's config with the searched keys left out; the evaluation settings and run.eval_every, which
make the scores and set when trials report to the pruner; any other of the sweep's overrides), the
split tuned on and the profile. A rerun under the same study name must have the same fingerprint;
otherwise it is refused and names each differing key, so that a changed schedule never mixes into an
old study's ranking.
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from pipeline.errors import UsageError
from pipeline.params import Config
from pipeline.secrets import redact, redact_values
from pipeline.sweep.study import storage_url, trial_config

FINGERPRINT_ATTR = "ddfp_fingerprint"  # a study user attr: shown by optuna-dashboard too
ABSENT = "<absent>"
# The list of the pipeline's splits: the sweep trains only on `split`, recorded on its own.
IGNORED = ("data.splits",)
# Beside the values a result depends on: when the pruner hears of it.
PRUNING = ("run.eval_every",)


def fingerprint(cfg: Config) -> dict[str, Any]:
    """Flat {key: value}, as the storage gives it back (JSON: tuples become lists)."""
    schedule = trial_config(cfg, {})
    shared = set(schedule.result_values()) - set(cfg.sweep.params) - set(IGNORED)
    values = redact_values(schedule.flat())
    keys = sorted(shared | set(PRUNING) | set(cfg.sweep.overrides))
    out: dict[str, Any] = {f"space.{k}": v.model_dump() for k, v in cfg.sweep.params.items()}
    out.update({f"schedule.{k}": values[k] for k in keys})
    out.update({"split": cfg.sweep_split, "profile": cfg.profile})
    return json.loads(json.dumps(out))


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every key whose value differs (ABSENT where one side lacks it)."""
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in keys if old.get(k, ABSENT) != new.get(k, ABSENT)}


def check_fingerprint(study: optuna.Study, cfg: Config) -> None:
    """Record the fingerprint on a study that has none (a new one, or one from before fingerprints),
    else UsageError unless it equals this config's."""
    new = fingerprint(cfg)
    old = study.user_attrs.get(FINGERPRINT_ATTR)
    if old is None:
        study.set_user_attr(FINGERPRINT_ATTR, new)
        return
    diff = differences(old, new)
    if diff:
        shown = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in diff.items())
        raise UsageError(f"study {study.study_name!r} in {redact(storage_url(cfg))} was created with other values, "
                         f"so its trials would not compare with new ones: {shown}. Pick a new --study name "
                         "(or restore these values to continue it)")


def _show(value: Any) -> str:
    return value if value == ABSENT else json.dumps(value)


__all__ = ["FINGERPRINT_ATTR", "fingerprint", "differences", "check_fingerprint"]
