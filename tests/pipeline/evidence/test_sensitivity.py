import json

import pytest

from pipeline.evidence.sensitivity import gather, write


def _metrics(root, method, miou, **diag):
    d = root / method / "16" / "seed0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"method": method, "seed": 0, "val_miou": miou, "diagnostics": diag}))


def test_sensitivity_puts_each_setting_beside_the_default(tmp_path):
    ablation, runs = tmp_path / "ablation", tmp_path / "runs"
    _metrics(ablation, "ddfp", 25.0, confident_ratio=0.5, nll_after=900.0)
    _metrics(ablation, "supervised", 24.0)
    _metrics(runs / "eps-1", "ddfp", 26.123, confident_ratio=0.4, nll_after=300.0)
    frame = gather("16", runs, ablation)
    assert list(zip(frame.setting, frame.method, frame.val_miou)) == [
        ("default", "ddfp", 25.0), ("default", "supervised", 24.0), ("eps-1", "ddfp", 26.12)]
    write(frame, "16", tmp_path / "out")
    text = (tmp_path / "out" / "sensitivity.md").read_text()
    assert "eps-1" in text and "300.000" in text and "nan" not in text  # missing diagnostics: "-"
    assert len(json.loads((tmp_path / "out" / "sensitivity.json").read_text())) == 3


def test_no_runs_is_an_error_naming_the_split(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="split 16"):
        gather("16", tmp_path / "runs", tmp_path / "ablation")
