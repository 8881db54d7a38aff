import json
import re
import subprocess
import sys

import pytest
import torch

from ddfp.schedule import flow_lr, poly_lr
from ddfp.methods import phase_at
from pipeline.evidence.bench import random_batch
from pipeline.train.fit import FitSummary, Interrupted, fit
from pipeline.train.learner import Learner
from tests.helpers.smoke import paths, tiny_cfg


def states(ckpt):
    state = torch.load(ckpt, weights_only=True)
    return {k: state[k] for k in ("student", "teacher", "flow", "opt_seg", "opt_flow", "rng", "iteration")}


def assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
def test_log_every_does_not_change_the_weights(tiny_data, tmp_path):
    # The DVC train stage leaves run.log_every out of its params and a checkpoint resumes across it:
    # both rest on the logged iterations' diagnostics not touching what is trained.
    for every, out in ((1, "a"), (7, "b")):
        fit(tiny_cfg(**{"train.max_iters": 25, "run.log_every": every}), paths(tiny_data, tmp_path / out),
            progress=False)
    a, b = states(tmp_path / "a" / "last.pt"), states(tmp_path / "b" / "last.pt")
    assert_same({k: a[k] for k in ("student", "teacher", "flow")}, {k: b[k] for k in ("student", "teacher", "flow")})


@pytest.mark.slow
def test_resume_is_bit_exact(tiny_data, tmp_path):
    # 10 iterations per epoch: 25 iterations cross the supervised, flow and DDFP phases.
    straight = fit(tiny_cfg(**{"train.max_iters": 25}), paths(tiny_data, tmp_path / "a"), progress=False)
    fit(tiny_cfg(**{"train.max_iters": 13}), paths(tiny_data, tmp_path / "b"), progress=False)
    resumed = fit(tiny_cfg(**{"train.max_iters": 25}), paths(tiny_data, tmp_path / "b"), progress=False)
    assert straight.iterations == resumed.iterations == 25
    assert_same(states(tmp_path / "a" / "last.pt"), states(tmp_path / "b" / "last.pt"))
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert {"flow_bpd", "nll_query", "nll_after", "delta_norm", "confident_ratio"} <= set(log[-1])


class StopAtCall:
    """A stop flag that turns on at its n-th reading (fit reads it once per iteration, then once per
    evaluation batch): a SLURM stop request arriving at a chosen point."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def test_a_stop_during_the_evaluation_saves_and_the_resume_evaluates_first(tiny_data, tmp_path):
    # 10 iterations an epoch: the 11th reading is the first batch of epoch 1's evaluation.
    cfg = tiny_cfg(**{"train.max_iters": 25})
    straight = fit(cfg, paths(tiny_data, tmp_path / "a"), progress=False)
    with pytest.raises(Interrupted, match="during the evaluation of epoch 1"):
        fit(cfg, paths(tiny_data, tmp_path / "b"), progress=False, stop=StopAtCall(11))
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert (saved["iteration"], saved["epoch"], saved["evals"]) == (10, 1, [])  # the epoch's end, not evaluated
    resumed = fit(cfg, paths(tiny_data, tmp_path / "b"), progress=False)
    assert resumed.iterations == 25 and resumed.evaluations == straight.evaluations  # epochs 1 and 2
    assert_same(states(tmp_path / "a" / "last.pt"), states(tmp_path / "b" / "last.pt"))


def test_checkpoint_of_another_config_is_not_resumed(tiny_data, tmp_path, capsys):
    fit(tiny_cfg(**{"train.max_iters": 2}), paths(tiny_data, tmp_path), progress=False)
    out = fit(tiny_cfg(**{"train.max_iters": 2, "perturb.eps": 1.0}), paths(tiny_data, tmp_path), progress=False)
    assert isinstance(out, FitSummary) and out.iterations == 2
    assert "evaluations" not in out.scalars() and out.scalars()["iterations"] == 2
    assert "another configuration" in capsys.readouterr().out


def test_the_learner_takes_its_place_in_the_schedule_from_the_loop():
    # The loop owns the iteration count; the learner sets the LR of the iteration it is handed.
    cfg = tiny_cfg(**{"train.max_iters": 10})
    learner = Learner(cfg, torch.device("cpu"), iters_per_epoch=10)
    batch = random_batch(cfg, cfg.spec.num_classes, torch.device("cpu"), torch.Generator().manual_seed(0))
    step = learner.run_iteration(batch, phase_at(0, cfg), 7, diagnostics=False)
    group = learner.opt_seg.param_groups[0]
    assert group["lr"] == poly_lr(group["base_lr"], 7, learner.total_iters, cfg.train.poly_power)
    assert not step.seg_skipped and torch.isfinite(step.logs["loss"])


@pytest.mark.slow
def test_cli_train_then_evaluate(tiny_data, tmp_path):
    run = tmp_path / "run"
    common = ["--profile", "smoke", "--set", "model.pretrained=false", "--set", "data.crop_size=32"]
    ddfp = [sys.executable, "-m", "pipeline.cli"]
    subprocess.run(ddfp + ["train", *common, "--data", str(tiny_data / "dataset"),
                           "--split-dir", str(tiny_data / "splits" / "8"), "--out", str(run)], check=True)
    out = tmp_path / "metrics.json"
    subprocess.run(ddfp + ["evaluate", *common, "--ckpt", str(run / "last.pt"), "--data", str(tiny_data / "dataset"),
                           "--split-dir", str(tiny_data / "splits" / "8"), "--out", str(out)], check=True)
    metrics = json.loads(out.read_text())
    assert 0 <= metrics["val_miou"] <= 100 and metrics["split"] == "8" and metrics["iterations"] == 30
    evals = json.loads((run / "val_log.json").read_text())
    assert [e["epoch"] for e in evals] == [1, 2, 3] and "val_miou_teacher" in evals[-1]
    losses = json.loads((run / "train_log.json").read_text())
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in losses)


def test_cli_errors_name_the_key(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--profile", "smoke", "--set",
                          "perturb.eps=-2", "--data", ".", "--split-dir", ".", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "perturb.eps" in res.stderr and "Traceback" not in res.stderr


def test_schedules():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01 and poly_lr(0.01, 100, 100, 0.9) == 0.0
    cfg = tiny_cfg()
    assert flow_lr(cfg, cfg.train.flow_start_epoch) == cfg.flow.lr
    assert flow_lr(cfg, cfg.train.epochs) == pytest.approx(cfg.flow.lr * cfg.flow.lr_decay)


def test_an_iteration_budget_gives_every_split_the_same_schedule(tiny_data, tmp_path):
    # Epoch length is |unlabelled| / batch by default, so a split with more labels would train fewer
    # iterations; train.iters_per_epoch fixes the budget whatever the split sizes.
    from pipeline.tracking.tracker import NullTracker
    from pipeline.train.trainer import Trainer

    cfg = tiny_cfg(**{"train.iters_per_epoch": 3})
    tr = Trainer(cfg, paths(tiny_data, tmp_path), NullTracker(), torch.device("cpu"))
    assert tr.iters_per_epoch == 3
    assert tr.total_iters == 3 * cfg.train.epochs
    default = Trainer(tiny_cfg(), paths(tiny_data, tmp_path), NullTracker(), torch.device("cpu"))
    n_unlabelled = len((tiny_data / "splits" / "8" / "unlabeled.txt").read_text().splitlines())
    assert default.iters_per_epoch == n_unlabelled // cfg.train.batch_size


def test_a_log_file_gets_one_plain_progress_line_per_logged_iteration(tiny_data, tmp_path, capsys):
    # What a SLURM job log or `dvc repro > file` shows: readable lines, no carriage-return redraws.
    fit(tiny_cfg(**{"train.max_iters": 6, "run.log_every": 2}), paths(tiny_data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("train ddfp: iteration ")]
    assert [line.split()[3] for line in lines] == ["2/6", "4/6", "6/6"]
    assert all(re.search(r", loss \d+\.\d{3}, .*\d+\.\d\d it/s, ETA (\d+m\d\ds|\?)$", line) for line in lines), lines


def test_the_pruning_hook_gets_the_student_while_no_teacher_is_evaluated(tiny_data, tmp_path):
    # A sweep reports every evaluation: the first (after the supervised epoch) has no teacher yet.
    seen = []
    fit(tiny_cfg(**{"train.max_iters": 20, "eval.model": "teacher"}), paths(tiny_data, tmp_path / "run"),
        progress=False, on_eval=lambda epoch, miou: seen.append((epoch, miou)))
    evals = json.loads((tmp_path / "run" / "val_log.json").read_text())
    assert [e["epoch"] for e in evals] == [1, 2] and "val_miou_teacher" not in evals[0]
    assert seen == [(1, evals[0]["val_miou_student"]), (2, evals[1]["val_miou_teacher"])]
