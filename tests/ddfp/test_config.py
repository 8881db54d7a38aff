import re

import pytest
import yaml

from ddfp.config import ConfigError, flatten
from pipeline import params


def test_defaults_are_the_authors_values():
    cfg = params.from_mapping({})
    assert cfg.perturb.eps == 4.0 and cfg.train.conf_thresh == 0.95 and cfg.teacher.ema_decay == 0.999
    f = cfg.flow
    assert (f.n_blocks, f.hidden_dim, f.clamp, f.input_noise, f.num_samples) == (2, 256, 2.0, 0.05, 20480)
    assert (f.lr, f.betas, f.grad_clip, f.lr_decay) == (1e-3, (0.5, 0.9), 50.0, 0.01)
    assert (cfg.loss.sup, cfg.loss.unsup, cfg.loss.perturb) == (1.0, 0.5, 0.5)
    t = cfg.train
    assert (t.sup_only_epochs, t.flow_start_epoch, t.perturb_start_epoch) == (1, 1, 2)
    assert (t.lr, t.momentum, t.weight_decay, t.poly_power) == (1e-3, 0.9, 1e-4, 0.9)


@pytest.mark.parametrize(
    "override, key",
    [
        ({"perturb.eps": -1.0}, "perturb.eps"),
        ({"train.conf_thresh": 1.5}, "train.conf_thresh"),
        ({"train.epochs": "3"}, "train.epochs"),
        ({"flow.bogus": 1}, "flow.bogus"),
        ({"perturb.mask": "some"}, "perturb.mask"),
        ({"train.flow_start_epoch": 5}, "train"),
    ],
)
def test_bad_values_name_the_key(override, key):
    cfg = params.load(profile="smoke")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        params.replace(cfg, override)


def test_overrides_parse_yaml_scalars_and_reject_garbage():
    assert params.parse_overrides(["perturb.eps=2", "data.splits=[1, 2]"]) == {"perturb.eps": 2, "data.splits": [1, 2]}
    with pytest.raises(ConfigError, match="key.sub=value"):
        params.parse_overrides(["perturb.eps"])


def test_params_yaml_is_the_demo_profile():
    with open("params.yaml") as fh:
        raw = yaml.safe_load(fh)
    demo = params.load(profile="demo")
    assert params.from_mapping(raw) == demo
    # Every key written out: DVC reads the train stage's params from this file, not from the schema's
    # defaults, and refuses to run or commit a stage whose param is missing.
    assert set(flatten(raw)) == set(demo.flat())


def test_profiles_resolve_and_smoke_extends_demo():
    smoke, demo = params.load(profile="smoke"), params.load(profile="demo")
    assert smoke.model.backbone == demo.model.backbone == "mobilenet_v2"
    assert params.load(profile="pascal").model.backbone == "resnet101"
    with pytest.raises(ConfigError, match="unknown profile"):
        params.load(profile="nope")


def test_replace_returns_new_validated_config():
    cfg = params.load(profile="smoke")
    new = params.replace(cfg, {"perturb.eps": 2.0})
    assert new.perturb.eps == 2.0 and cfg.perturb.eps == 4.0


def _float_settings(cfg: params.Config) -> dict[str, object]:
    """Every float setting of the config with a value that puts inf/nan where a float goes."""
    flat = {k: v for k, v in cfg.flat().items() if not k.startswith("sweep.params.")}
    keys = {k: None for k, v in flat.items() if isinstance(v, float)}
    keys.update({k: [None, v[1]] for k, v in flat.items() if isinstance(v, list) and v and isinstance(v[0], float)})
    keys.update({"train.head_lr_mult": None, "sweep.timeout_min": None, "sweep.params": "low"})
    return keys


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_every_float_setting_must_be_finite(bad):
    cfg = params.load(profile="smoke")
    settings = _float_settings(cfg)
    assert {"perturb.eps", "data.scale_range", "flow.betas", "tracking.checkpoint_max_mb"} <= set(settings)
    for key, shape in settings.items():
        if shape == "low":
            value = {"perturb.eps": {"type": "float", "low": bad, "high": 8.0}}
        else:
            value = [bad, shape[1]] if isinstance(shape, list) else bad
        with pytest.raises(ConfigError, match=re.escape(key) + ".*finite"):
            params.replace(cfg, {key: value})


def test_student_bn_teacher_must_pseudo_label_in_train_mode():
    # student_bn copies weights but never buffers: an eval-mode teacher would keep its initial BN
    # statistics forever.
    cfg = params.load(profile="smoke")
    both = r"teacher\.mode.*student_bn.*teacher\.pseudo_label_mode.*pseudo_label_mode: train"
    with pytest.raises(ConfigError, match=both):
        params.replace(cfg, {"teacher.mode": "student_bn"})
    released = params.replace(cfg, {"teacher.mode": "student_bn", "teacher.pseudo_label_mode": "train"})
    assert released.teacher.mode == "student_bn"


def test_method_controls_are_flags():
    cfg = params.load(profile="smoke")
    assert (cfg.flow.fit_on, cfg.perturb.direction) == ("student", "density")
    with pytest.raises(ConfigError, match=r"flow\.fit_on"):
        params.replace(cfg, {"flow.fit_on": "both"})
    with pytest.raises(ConfigError, match=r"perturb\.direction"):
        params.replace(cfg, {"perturb.direction": "up"})
    assert params.replace(cfg, {"perturb.eps": 0.0}).perturb.eps == 0.0


def _before_the_run_section(cfg) -> dict:
    """cfg as a checkpoint written before the run section stored it: run keys under train and data."""
    tree = cfg.to_dict()
    run = tree.pop("run")
    tree["data"]["num_workers"] = run.pop("num_workers")
    tree["train"].update({k: run[k] for k in params.MOVED_TO_RUN["train"]})  # later run keys: defaults
    return tree


def test_a_params_file_with_a_moved_key_is_told_where_it_went():
    old = _before_the_run_section(params.load(profile="smoke"))
    with pytest.raises(ConfigError, match=r"train\.log_every: moved to run\.log_every"):
        params.from_mapping(old)


def test_a_checkpoint_from_before_the_run_section_still_loads():
    cfg = params.replace(params.load(profile="smoke"), {"run.log_every": 3, "run.num_workers": 1})
    assert params.stored_config(_before_the_run_section(cfg)) == cfg
    assert params.stored_config(cfg.to_dict()) == cfg
