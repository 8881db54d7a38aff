"""The pipeline's configuration: the method's sections (ddfp.config) plus where and how runs go
(run cadence and device, downloads, tracking, SLURM, sweeps), built from params.yaml or a profile.

Layers, later wins:
  1. the field defaults: the authors' values for Pascal VOC with ResNet-101 (their released configs);
  2. a mapping (params.yaml, or a named profile from the profiles shipped beside this module, merged
     over the profile it `extends:`);
  3. overrides ``key.sub=value`` (CLI ``--set``, sweep trials), parsed as YAML scalars.

Validation happens once, when the Config is built: an unknown key, a wrong type or an out-of-range
value raises ``ConfigError`` naming the dotted key and what was expected, before anything runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ddfp.config import ConfigError, Method, MethodConfig
from pipeline.secrets import redact_values
from pipeline.sections import (
    DownloadConfig,
    RunConfig,
    SlurmConfig,
    SweepConfig,
    TrackingConfig,
)

# Shipped inside the package, so that an installed `ddfp` (not only a checkout) knows its profiles.
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

# The one list of keys that cannot change a run's trained weights: how, where and how often it runs,
# how it is scored, tracked, launched or swept. A resume fingerprint, the MLflow group of a run and
# the train stage's params in dvc.yaml all leave exactly these out.
NOT_TRAINING = ("profile", "methods", "run.", "eval.", "download.", "tracking.", "slurm.", "sweep.")
# Not training values, but they make a trained run's scores: what is evaluated and how
# (eval.batch_size does not change a score). A result (an ablation record, a sweep's trials) is of
# the training values and these.
SCORING = ("eval.model", "eval.mode", "eval.crop_size", "eval.stride_ratio")


def _is_field(dotted: str) -> bool:
    model: Any = Config
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        model = fields[part].annotation
    return not hasattr(model, "model_fields")  # a leaf, not a whole section


class Config(MethodConfig):
    """Everything `ddfp` reads: the method's sections (ddfp.config.MethodConfig) and the pipeline's."""

    profile: str = "pascal"
    # The pipeline's method axis: `dvc repro` trains and evaluates each of these on every split
    # (train.method is then set per run); the baseline beside DDFP makes the gain visible.
    methods: list[Method] = Field(
        default_factory=lambda: ["supervised", "ddfp"], min_length=1)
    download: DownloadConfig = DownloadConfig()
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()
    slurm: SlurmConfig = SlurmConfig()
    sweep: SweepConfig = SweepConfig()

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError("each method once")
        return methods

    @model_validator(mode="after")
    def _sweep_keys(self) -> "Config":
        # On the root: a sweep names keys of the whole configuration.
        sweep = self.sweep
        for where, keys in (("params", sweep.params), ("overrides", sweep.overrides)):
            for key in keys:
                if key.startswith(("sweep.", "profile")) or not _is_field(key):
                    raise ValueError(f"sweep.{where}: {key!r} is not a config key (dotted, e.g. perturb.eps)")
        both = set(sweep.params) & set(sweep.overrides)
        if both:
            raise ValueError(f"sweep: {sorted(both)} both searched and overridden")
        return self

    @property
    def sweep_split(self) -> str:
        """The labelled split a sweep tunes on. Checked only when a sweep asks: a pipeline whose
        data.splits were overridden need not also override sweep.split."""
        split = self.sweep.split or self.data.splits[0]
        if split not in self.data.splits:
            raise ConfigError(f"sweep.split: {split!r} is not one of data.splits {self.data.splits}")
        return split

    def training_values(self) -> dict[str, Any]:
        """The dotted values that can change a run's trained weights (secrets redacted, as stored),
        without the ones train.method never reads (a supervised run is the same run at any eps)."""
        return {k: v for k, v in redact_values(self.flat()).items()
                if not k.startswith(NOT_TRAINING) and not self._unread(k)}

    def result_values(self) -> dict[str, Any]:
        """The dotted values a trained run's scores depend on: its training values and SCORING."""
        flat = self.flat()
        return {**self.training_values(), **{k: flat[k] for k in SCORING if not self._unread(k)}}

    def _unread(self, key: str) -> bool:
        from ddfp.methods import METHODS, unread_keys  # imports torch: only when a run's values are asked

        unread = unread_keys(METHODS[self.train.method])
        return any(key == k or key.startswith(k + ".") for k in unread)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_s = "" if isinstance(got, Mapping) else f" (got {got!r})"
        lines.append(f"{key}: {e['msg']}{got_s}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _tuples_from_lists(tree: Any) -> Any:
    # YAML has no tuples; strict pydantic wants them for tuple fields. Lists of mappings stay lists.
    if isinstance(tree, Mapping):
        return {k: _tuples_from_lists(v) for k, v in tree.items()}
    if isinstance(tree, list) and tree and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tree):
        return tuple(tree)
    if isinstance(tree, list):
        return [_tuples_from_lists(v) for v in tree]
    return tree


def _lists_where_expected(tree: dict[str, Any]) -> dict[str, Any]:
    # data.splits is a list of names; numbers in YAML ([16, 32]) are accepted as names.
    data = tree.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("splits"), (list, tuple)):
        tree = {**tree, "data": {**data, "splits": [str(s) for s in data["splits"]]}}
    return tree


# Keys that moved into the run section: a params file still using them is told where they went, and
# a checkpoint that stored them (they never changed its weights) still loads (stored_config).
MOVED_TO_RUN = {"train": ("device", "launcher", "log_every", "ckpt_every", "eval_every"), "data": ("num_workers",)}


def _moved(tree: Mapping[str, Any]) -> list[str]:
    return [f"{section}.{key}" for section, keys in MOVED_TO_RUN.items()
            if isinstance(tree.get(section), Mapping) for key in keys if key in tree[section]]


def stored_config(tree: Mapping[str, Any]) -> Config:
    """A checkpoint's stored configuration, validated, with the keys of MOVED_TO_RUN moved."""
    tree = copy.deepcopy(dict(tree))
    for dotted in _moved(tree):
        section, key = dotted.split(".")
        tree.setdefault("run", {})[key] = tree[section].pop(key)
    return from_mapping(tree)


def from_mapping(tree: Mapping[str, Any]) -> Config:
    """Validate a nested mapping into a Config, or raise ConfigError naming every bad key."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"configuration must be a mapping, got {type(tree).__name__}")
    moved = _moved(tree)
    if moved:
        raise ConfigError("; ".join(f"{k}: moved to run.{k.split('.')[1]}" for k in moved)
                          + " (the run section: settings that cannot change the weights)")
    tree = _lists_where_expected(_tuples_from_lists(dict(tree)))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b'; refuses to descend into a non-mapping."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, cannot set {key}")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['perturb.eps=2', 'data.splits=[16,32]'] -> {'perturb.eps': 2, ...} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; mappings merge, everything else (lists included) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return tree


def profile_tree(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    """The full mapping of a named profile: its file merged over its `extends:` parent, if any."""
    path = profiles_dir / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise ConfigError(f"profile: unknown profile {name!r}; known: {', '.join(known)}")
    tree = read_yaml(path)
    parent = tree.pop("extends", None)
    base = profile_tree(parent, profiles_dir) if parent else {}
    return deep_merge(base, {**tree, "profile": name})


def load(
    params: Path | None = Path("params.yaml"),
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    profiles_dir: Path = PROFILES_DIR,
) -> Config:
    """params.yaml (or the named profile instead of it) + dotted overrides -> validated Config."""
    tree = profile_tree(profile, profiles_dir) if profile else (read_yaml(params) if params else {})
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    return from_mapping(tree)


def replace(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new validated Config with dotted fields replaced (how sweep trials derive theirs)."""
    tree = cfg.to_dict()
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return from_mapping(tree)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def write_profile(name: str, path: Path) -> str:
    """Rewrite the params file at path as the full config of a named profile (`ddfp profile`)."""
    from pipeline.files import write_text_atomic

    cfg = load(None, name)
    header = (f"# Active configuration: profile '{name}' (pipeline/profiles/{name}.yaml), written out in\n"
              "# full by `ddfp profile` because DVC reads every declared param from this file. Switch with\n"
              "# `ddfp profile <demo|smoke|pascal|cityscapes>`. An edit here is a local experiment; a lasting\n"
              "# change of the demo goes into its profile, then `ddfp profile demo` (a test checks the two agree).\n")
    write_text_atomic(path, header + dump_yaml(cfg))
    return f"{path}: now profile {name}"
