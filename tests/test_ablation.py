"""`ddfp ablation` on the smoke profile: every method x split x seed, outputs, and a rerun that trains nothing."""

import json

import pytest
from test_trainer import tiny_cfg, tiny_data  # noqa: F401 - tiny_data is a fixture

from ddfp import config
from pipeline.ablation import run_ablation


@pytest.mark.slow
def test_ablation_trains_every_cell_once_and_writes_the_outputs(tiny_data, tmp_path):
    cfg = config.replace(tiny_cfg(**{"train.max_iters": 2}), {"data.splits": ["8"]})
    args = (cfg, tiny_data / "dataset", tiny_data / "splits", None, tmp_path / "work", tmp_path / "out", [0, 1],
            ["supervised", "mean_teacher", "ddfp"])
    results = run_ablation(*args, progress=False)
    assert set(results) == {"supervised", "mean_teacher", "ddfp"}
    assert all(len(results[m]["8"]) == 2 for m in results)
    assert json.loads((tmp_path / "out" / "ablation.json").read_text()) == results
    text = (tmp_path / "out" / "ablation.md").read_text()
    assert "DDFP - supervised" in text and "DDFP - mean_teacher" in text and "± " in text
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 5000
    assert not list((tmp_path / "work").rglob("last.pt"))  # checkpoints dropped once evaluated
    stamp = {p: p.stat().st_mtime for p in (tmp_path / "work").rglob("metrics.json")}
    assert run_ablation(*args, progress=False) == results  # nothing retrained
    assert stamp == {p: p.stat().st_mtime for p in (tmp_path / "work").rglob("metrics.json")}


def test_unknown_method_is_refused(tmp_path):
    cfg = config.load(profile="smoke")
    with pytest.raises(ValueError, match="--methods: unknown"):
        run_ablation(cfg, tmp_path, tmp_path, None, tmp_path, tmp_path, [0], ["ddfp", "fixmatch"])


def test_goal_lines_give_the_gap_its_standard_error():
    import pandas as pd

    from pipeline.ablation import goal_lines

    cfg = config.replace(config.load(profile="smoke"), {"data.splits": ["8", "16"]})
    summary = pd.DataFrame([
        {"method": "supervised", "split": "8", "mean": 20.0, "std": 3.0, "seeds": 3},
        {"method": "mean_teacher", "split": "8", "mean": 24.0, "std": 4.0, "seeds": 3},
        {"method": "ddfp", "split": "8", "mean": 26.0, "std": 3.0, "seeds": 3},
        {"method": "ddfp", "split": "16", "mean": 90.0, "std": 0.0, "seeds": 3},  # not the smallest split
    ])
    lines = goal_lines(cfg, summary)
    assert lines == [
        "- split 8: DDFP - supervised = +6.00 ± 2.45 (standard error) mIoU (goal >= +10: NOT met)",
        "- split 8: DDFP - mean_teacher = +2.00 ± 2.89 (standard error) mIoU (goal >= +1: met)",
    ]
