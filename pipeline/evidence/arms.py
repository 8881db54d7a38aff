"""The ablation's arms: every method of the method table, DDFP's controls of the density direction and
the all-labels bound. A light module (no torch), so the CLI can list the arms in its help."""

from __future__ import annotations

from typing import Any

from ddfp.config import METHODS

# arm -> (train.method, overrides): the one place an arm is defined.
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    **{method: (method, {}) for method in METHODS},
    "ddfp_eps0": ("ddfp", {"perturb.eps": 0.0}),
    "ddfp_random": ("ddfp", {"perturb.direction": "random"}),
    "ddfp_dropout": ("ddfp", {"perturb.direction": "dropout"}),
    "all_labels": (METHODS[0], {}),  # the supervised baseline on all_labels_split(smallest split)
}
CURVE_ARMS = METHODS  # the label curve: the methods, not the controls


__all__ = ["ARMS", "CURVE_ARMS"]
