"""pipeline.train.export: a finished run's model.pt holds the reported network and its record, not
the resume state; evaluate and predict take it or last.pt and get the same numbers."""

import json

import pytest
import torch

from ddfp.config import ConfigError
from pipeline import params
from pipeline.errors import DataError
from pipeline.stages.evaluate import run_evaluate
from pipeline.train import checkpoint
from pipeline.train.export import MODEL_KEYS, export_run, load_model
from pipeline.train.fit import fit
from tests.helpers.smoke import paths, tiny_cfg


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    """A DDFP run past its supervised epochs (the teacher is the reported network), and its export."""
    cfg = tiny_cfg(**{"run.eval_every": 1})  # all three epochs: the last two evaluate the teacher
    run = tmp_path_factory.mktemp("run")
    fit(cfg, paths(tiny_data, run), progress=False)
    out = tmp_path_factory.mktemp("models") / "8" / "ddfp"
    return cfg, run, export_run(cfg, run, out)


def test_the_export_is_the_reported_network_and_its_record_a_third_of_the_checkpoint(finished):
    cfg, run, model = finished
    state, export = checkpoint.load(run / "last.pt"), torch.load(model, weights_only=True)
    assert set(export) == set(MODEL_KEYS) and export["model"] == "teacher" and export["run_dir"] == str(run)
    assert export["weights"].keys() == state["teacher"].keys()
    assert all(torch.equal(export["weights"][k], state["teacher"][k]) for k in state["teacher"])
    assert (export["iteration"], export["evals"], export["history"]) == (state["iteration"], state["evals"], state["history"])
    assert 3 * model.stat().st_size < (run / "last.pt").stat().st_size  # no student, flow or optimiser state
    # The curves beside it: the loss rows, and val_miou = the reported network's, for DVC's plots.
    history = json.loads((model.parent / "train_log.json").read_text())
    assert [{k: v for k, v in row.items() if v is not None} for row in history] == state["history"]
    assert len({tuple(row) for row in history}) == 1  # one set of keys (DVC's plots need it), null-filled
    assert any(None in row.values() for row in history)  # the perturbation's keys start late
    val = json.loads((model.parent / "val_log.json").read_text())
    assert [r["val_miou"] for r in val] == [e["val_miou_teacher"] for e in state["evals"] if "val_miou_teacher" in e]
    assert val and all("iteration" in r for r in val)


def test_evaluate_gives_the_same_numbers_from_the_export_as_from_the_checkpoint(finished, tiny_data, tmp_path):
    cfg, run, model = finished
    data, split = tiny_data / "dataset", tiny_data / "splits" / "8"
    a = run_evaluate(cfg, model, data, split, tmp_path / "a.json")
    b = run_evaluate(cfg, run / "last.pt", data, split, tmp_path / "b.json")
    assert a == b and a["reported_model"] == "teacher" and "val_miou_student" not in a


def test_the_export_follows_eval_model_and_a_mismatch_is_refused(finished, tiny_data, tmp_path):
    cfg, run, model = finished
    student = params.replace(cfg, {"eval.model": "student"})
    with pytest.raises(ConfigError, match=r"eval.model is student but .*model.pt holds the teacher"):
        run_evaluate(student, model, tiny_data / "dataset", tiny_data / "splits" / "8", tmp_path / "m.json")
    again = export_run(student, run, tmp_path / "student")
    assert load_model(again, student)["model"] == "student"


def test_an_unfinished_run_or_another_file_is_no_model(finished, tmp_path):
    cfg, run, _ = finished
    state = checkpoint.load(run / "last.pt")
    checkpoint.save_atomic({**state, "done": False}, tmp_path / "half" / "last.pt")
    with pytest.raises(DataError, match=r"half/last.pt: training has not finished"):
        export_run(cfg, tmp_path / "half", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(DataError, match=r"other.pt: cannot load it \(neither a model .* nor a training checkpoint"):
        load_model(tmp_path / "other.pt", cfg)
