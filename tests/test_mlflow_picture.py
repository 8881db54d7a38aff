"""The README's MLflow picture: taken from the evaluate stage's run records, by a real `mlflow server`
on a real sqlite store, in Debian's headless Chromium."""

import pytest
from conftest import require_service
from test_trainer import tiny_cfg
from test_trainer import tiny_data  # noqa: F401 - a fixture

from pipeline.evaluation_stage import run_evaluate
from pipeline.mlflow_picture import missing_browser, take_picture
from pipeline.trainer import RunPaths, fit


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.mlflow_server
def test_the_picture_shows_split_method_and_val_miou_of_every_recorded_run(tiny_data, tmp_path, monkeypatch):
    require_service(missing_browser())
    (tmp_path / "store").mkdir()
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    # One record in each layout of the evaluate stage: metrics/<split>.json, metrics/<split>/<method>.json.
    outs = {("8", "supervised"): tmp_path / "metrics" / "8.json",
            ("16", "ddfp"): tmp_path / "metrics" / "16" / "ddfp.json"}
    mious = {}
    for (split, method), out in outs.items():
        cfg = tiny_cfg(**{"tracking.enabled": True, "train.max_iters": 4, "train.method": method})
        run, split_dir = tmp_path / "runs" / split / method, tiny_data / "splits" / split
        fit(cfg, RunPaths(tiny_data / "dataset", split_dir, run), progress=False)
        mious[f"synthetic-{split}-{method}-seed2"] = run_evaluate(cfg, run / "last.pt", tiny_data / "dataset",
                                                                  split_dir, out)["val_miou"]
    picture = tmp_path / "reports" / "mlflow_compare.png"
    text = take_picture(tmp_path / "metrics", store, picture)
    assert picture.stat().st_size > 10_000
    lines = text.split("\n")
    assert all(name in text for name in mious), text[:2000]
    # The params rows that tell the runs apart, one column per run (ordered by split, then method).
    assert {"split 8 16", "train.method supervised ddfp"} <= set(lines), text[:2000]
    assert "val_miou" in lines and all(f"{m:.4g}" in lines for m in mious.values()), (mious, text[-1500:])
    assert not list(picture.parent.glob(".*.tmp"))
