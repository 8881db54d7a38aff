"""Where `ddfp sweep` / `ddfp ablation` get their data: never by rewriting the DVC pipeline's outputs or
another profile's inputs (pipeline/stages/inputs.py)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import params
from pipeline.errors import DataError, UsageError
from pipeline.stages.inputs import INPUT_KEYS, is_pipelines, own_dir, resolve_inputs
from pipeline.stages.splits import run_splits
from pipeline.stages.synthetic import write_synthetic
from tests.helpers.project import ROOT


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path):
    """A DVC project whose pipeline (params.yaml) is another configuration than the smoke profile's:
    another generator seed, split 16 only; its data/dataset and data/splits are that pipeline's."""
    ws = tmp_path / "ws"
    theirs = params.replace(params.load(profile="smoke"), {"data.splits": ["16"], "synthetic.seed": 1})
    write_synthetic(theirs, ws / "data" / "dataset")
    run_splits(theirs, ws / "data" / "dataset", ws / "data" / "splits")
    (ws / "params.yaml").write_text(params.dump_yaml(theirs))
    (ws / "dvc.yaml").write_bytes((ROOT / "dvc.yaml").read_bytes())
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    return ws


def test_another_profiles_inputs_are_never_rewritten(workspace):
    before = tree(workspace / "data")
    mine = params.load(profile="smoke")
    got = resolve_inputs(mine, ["8"], root=workspace)
    assert {k: v for k, v in tree(workspace / "data").items() if not k.startswith("profiles/")} == before
    own = own_dir(mine, workspace)
    assert own.parent == workspace / "data" / "profiles" and own.name.startswith("smoke-")
    assert got.data == own / "dataset" and got.splits == own / "splits"
    assert got.weights == own / "weights" / "mobilenet_v2.pth" and got.weights.is_file()
    assert (got.splits / "8" / "labeled.txt").is_file()
    assert tree(got.data) != tree(workspace / "data" / "dataset")  # its own seed 0, not the pipeline's 1
    again = tree(own)
    assert resolve_inputs(mine, ["8", "16"], root=workspace) == got and tree(own) == again  # reused


def test_given_paths_are_only_read(tmp_path):
    cfg = params.load(profile="smoke")
    with pytest.raises(UsageError, match="--splits-dir"):
        resolve_inputs(cfg, ["8"], data=tmp_path, root=tmp_path)
    with pytest.raises(DataError, match="only read"):
        resolve_inputs(cfg, ["8"], data=tmp_path / "nope", splits_dir=tmp_path, root=tmp_path)
    with pytest.raises(DataError, match="only read"):
        resolve_inputs(cfg, ["8"], data=tmp_path, splits_dir=tmp_path, weights=tmp_path / "w.pth", root=tmp_path)
    assert list(tmp_path.iterdir()) == []
    unpretrained = params.replace(cfg, {"model.pretrained": False})
    assert resolve_inputs(unpretrained, ["8"], data=tmp_path, splits_dir=tmp_path, root=tmp_path).weights is None


def test_which_inputs_are_the_pipelines():
    smoke, demo = params.load(profile="smoke"), params.load(profile="demo")
    assert is_pipelines(smoke, smoke, ["8"]) and not is_pipelines(smoke, demo, ["8"])
    assert not is_pipelines(smoke, smoke, ["32"])  # a split the pipeline does not make
    assert is_pipelines(params.replace(smoke, {"data.splits": ["8"], "perturb.eps": 1.0, "sweep.study": "x"}),
                        smoke, ["8"])
    seeded = params.replace(smoke, {"data.split_seed": 1})
    assert not is_pipelines(seeded, smoke, ["8"]) and own_dir(seeded, Path()) != own_dir(smoke, Path())


def test_input_keys_are_the_data_stages_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = {p for name in ("download", "splits", "weights") for p in stages[name]["params"]}
    covered = lambda p: any(p == k or p.startswith(f"{k}.") for k in INPUT_KEYS)  # noqa: E731
    assert all(covered(p) for p in params - {"data.splits"})
    assert all(any(p == k or p.startswith(f"{k}.") or k.startswith(f"{p}.") for p in params) for k in INPUT_KEYS)
