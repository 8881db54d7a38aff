"""What makes two runs the same run is their method's own values (ddfp.methods.unread_keys through
Config.training_values): a value a method never reads cannot change its weights, so resumes,
records, sweeps and tracking groups ignore it, and a supervised run rerun by an eps change finds
itself finished."""

import pytest
import torch

from ddfp.config import METHODS
from ddfp.methods import METHODS as TABLE, unread_keys
from pipeline.tracking.tracker import NullTracker
from pipeline.train import checkpoint
from pipeline.train.fit import fit
from tests.helpers.smoke import paths, tiny_cfg

# A valid other value for every key some method does not read (together with any subset of them:
# sup_only 0 <= flow_start 2 <= perturb_start 3 holds with or without the first).
OTHER = {
    "teacher.mode": "student_bn", "teacher.pseudo_label_mode": "train", "teacher.ema_decay": 0.5,
    "eval.model": "student",
    "flow.n_blocks": 1, "flow.hidden_dim": 32, "flow.clamp": 1.0, "flow.input_noise": 0.2, "flow.num_samples": 100,
    "flow.init_std": 0.2, "flow.lr": 0.01, "flow.betas": (0.9, 0.99), "flow.grad_clip": 5.0, "flow.lr_decay": 0.5,
    "flow.perm_seed": 3, "flow.fit_on": "teacher",
    "perturb.eps": 1.0, "perturb.mask": "all", "perturb.direction": "random",
    "loss.unsup": 0.25, "loss.perturb": 0.25, "loss.warmup_unsup": 0.3,
    "train.cutmix_prob": 1.0, "train.conf_thresh": 0.3,
    "train.sup_only_epochs": 0, "train.flow_start_epoch": 2, "train.perturb_start_epoch": 3,
}
# Every phase of the smoke schedule: supervised, flow warm-up, perturbation (one iteration each: a
# value that reaches the weights changes them at its first use).
SCHEDULE = {"train.epochs": 3, "train.iters_per_epoch": 1, "run.eval_every": 3, "train.conf_thresh": 0.5}


def unread_overrides(method: str) -> dict:
    unread = unread_keys(TABLE[method])
    return {k: v for k, v in OTHER.items() if k in unread or k.split(".")[0] in unread}


def test_every_unread_key_has_another_value_here_and_the_table_names_only_real_keys():
    flat = tiny_cfg().flat()
    for method in METHODS:
        for key in unread_keys(TABLE[method]):
            leaves = [k for k in flat if k == key or k.startswith(key + ".")]
            assert leaves, f"{method}: {key} is not a config key or section"
            assert all(k in OTHER for k in leaves), (method, [k for k in leaves if k not in OTHER])


@pytest.mark.parametrize("method", [m for m in METHODS if unread_keys(TABLE[m])])
def test_values_a_method_does_not_read_leave_its_weights_bit_identical(tmp_path, tiny_data, method):
    base = tiny_cfg(**SCHEDULE, **{"train.method": method})
    other = tiny_cfg(**{**SCHEDULE, "train.method": method, **unread_overrides(method)})
    assert base.training_values() == other.training_values()
    weights = []
    for name, cfg in (("base", base), ("other", other)):
        fit(cfg, paths(tiny_data, tmp_path / name), NullTracker(), progress=False)
        weights.append(checkpoint.load(tmp_path / name / "last.pt")["student"])
    assert weights[0].keys() == weights[1].keys()
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differing, f"{method}: {differing[:5]} changed with {sorted(unread_overrides(method))}"


def test_what_a_method_reads_still_tells_runs_apart():
    eps = {"perturb.eps": 1.0}
    assert tiny_cfg(**{"train.method": "ddfp"}).training_values() != tiny_cfg(**{"train.method": "ddfp", **eps}).training_values()
    assert tiny_cfg(**{"train.method": "supervised"}).training_values() == tiny_cfg(**{"train.method": "supervised", **eps}).training_values()
    # train.method itself always counts.
    assert tiny_cfg(**{"train.method": "supervised"}).training_values() != tiny_cfg(**{"train.method": "fixmatch"}).training_values()


def test_a_supervised_run_rerun_after_an_eps_change_is_found_finished(tmp_path, tiny_data):
    cfg = tiny_cfg(**SCHEDULE, **{"train.method": "supervised"})
    fit(cfg, paths(tiny_data, tmp_path), NullTracker(), progress=False)
    before = (tmp_path / "last.pt").stat().st_mtime_ns
    again = fit(tiny_cfg(**SCHEDULE, **{"train.method": "supervised", "perturb.eps": 1.0}), paths(tiny_data, tmp_path),
                NullTracker(), progress=False)
    assert again.iterations == 3
    assert (tmp_path / "last.pt").stat().st_mtime_ns == before  # nothing retrained or rewritten
