"""The README's MLflow picture: taken from the evaluate stage's run records, by a real `mlflow server`
on a real sqlite store, in Debian's headless Chromium."""

import pytest

from pipeline.evidence.mlflow_picture import missing_browser, take_picture
from pipeline.stages.evaluate import run_evaluate
from pipeline.train.fit import fit
from pipeline.train.trainer import RunPaths
from tests.helpers.services import require_service
from tests.helpers.smoke import tiny_cfg


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
        metrics = run_evaluate(cfg, run / "last.pt", tiny_data / "dataset", split_dir, out)
        mious[f"synthetic-{split}-{method}-seed{cfg.train.seed}"] = metrics["val_miou"]
    picture = tmp_path / "reports" / "mlflow_compare.png"
    text = take_picture(tmp_path / "metrics", store, picture)
    assert picture.stat().st_size > 10_000
    lines, shown = text.split("\n"), text[text.find("Run details"):]
    assert all(name in text for name in mious), (list(mious), shown[:2000])
    # The params rows that tell the runs apart, one column per run (ordered by split, then method).
    assert {"split 8 16", "train.method supervised ddfp"} <= set(lines), shown[:2000]
    # The UI rounds (28.2607 -> 28.26, 0.4802 -> 0.48); a reader sees the value to two decimals.
    numbers = [float(x) for x in lines if x.replace(".", "", 1).isdigit()]
    assert "val_miou" in lines, shown[:2000]
    assert all(any(abs(n - m) < 0.005 for n in numbers) for m in mious.values()), (mious, shown[:2000])
    assert not list(picture.parent.glob(".*.tmp"))
