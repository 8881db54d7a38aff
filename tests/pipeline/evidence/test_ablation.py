"""`ddfp ablation`: the arms and the plan, the committed per-run records a rerun resumes from (on any
machine), the paired-by-seed statistics, and one smoke-profile run of every arm."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import params
from pipeline.errors import DataError
from pipeline.evidence.ablation import (
    ARMS,
    Cell,
    all_labels_split,
    arm_config,
    commit_records,
    plan,
    record_config,
    record_path,
    run_ablation,
)
from pipeline.evidence.ablation_stats import goal_rows, paired_difference, split_pairs
from pipeline.evidence.diagnostics import train_log_diagnostics
from pipeline.train.code_version import code_digest
from tests.helpers.smoke import tiny_cfg

DDFP = str(Path(sys.executable).parent / "ddfp")


def smoke(**overrides):
    return params.replace(params.load(profile="smoke"), {"data.splits": ["8", "16"], "tracking.enabled": False,
                                                         **overrides})


def test_plan_is_every_arm_at_the_smallest_split_and_the_main_methods_on_the_curve():
    cells = plan(["16", "8"], list(ARMS), [0, 1, 2, 3, 4], [0, 1, 2])
    at8 = [c for c in cells if c.split == "8"]
    assert {(c.arm, c.seed) for c in at8} == {(a, s) for a in ARMS for s in range(5)} and len(at8) == 9 * 5
    assert {(c.arm, c.seed) for c in cells if c.split == "16"} == {
        (a, s) for a in ("supervised", "mean_teacher", "fixmatch", "unimatch", "ddfp") for s in range(3)}
    assert cells[:9] == [Cell(a, "8", 0) for a in ARMS]  # seed by seed: an interrupted run leaves whole pairs


def test_arms_with_seeds_of_their_own_train_those_seeds_in_the_same_seed_by_seed_order():
    cells = plan(["16", "8"], ["supervised", "fixmatch", "ddfp"], [0, 1, 2], [0], {"fixmatch": [0, 1]})
    at8 = [(c.arm, c.seed) for c in cells if c.split == "8"]
    assert at8 == [("supervised", 0), ("fixmatch", 0), ("ddfp", 0), ("supervised", 1), ("fixmatch", 1), ("ddfp", 1),
                   ("supervised", 2), ("ddfp", 2)]
    assert {c.arm for c in cells if c.split == "16"} == {"supervised", "fixmatch", "ddfp"}  # the curve is its own
    curve = plan(["16", "8"], ["supervised", "fixmatch", "ddfp"], [0], [0, 1], curve_arms=["supervised", "ddfp"])
    assert [(c.arm, c.seed) for c in curve if c.split == "16"] == [("supervised", 0), ("ddfp", 0), ("supervised", 1),
                                                                   ("ddfp", 1)]


def test_seeds_of_must_name_an_arm_and_seeds(tmp_path):
    with pytest.raises(ValueError, match="unknown \\['cps'\\]"):
        run_ablation(smoke(), tmp_path, tmp_path, None, tmp_path, tmp_path, [0], ["ddfp"], seeds_of={"cps": [0]})
    run = subprocess.run([DDFP, "ablation", "--profile", "smoke", "--seeds-of", "fixmatch=0,x"], capture_output=True,
                         text=True)
    assert run.returncode != 0 and "--seeds-of 'fixmatch=0,x': expected ARM=SEED,SEED" in run.stderr


def test_each_arm_changes_only_its_own_values():
    cfg = smoke()
    flat = {arm: arm_config(cfg, Cell(arm, "8", 3)).flat() for arm in ARMS}
    assert flat["ddfp_eps0"]["perturb.eps"] == 0.0 and flat["ddfp_eps0"]["train.method"] == "ddfp"
    assert flat["ddfp_random"]["perturb.direction"] == "random"
    assert flat["ddfp_dropout"]["perturb.direction"] == "dropout"
    assert {flat[m]["train.method"] for m in ("fixmatch", "unimatch")} == {"fixmatch", "unimatch"}
    assert flat["all_labels"]["train.method"] == "supervised"
    assert all(f["train.seed"] == 3 for f in flat.values())
    base = flat["ddfp"]
    for arm in ("ddfp_eps0", "ddfp_random", "ddfp_dropout"):
        assert {k for k in base if base[k] != flat[arm][k]} == ({"perturb.eps"} if arm == "ddfp_eps0"
                                                                else {"perturb.direction"})


def test_paired_difference_has_the_t_interval():
    ddfp = {s: 10.0 + d for s, d in enumerate([1, 2, 3, 4, 5])}
    base = {s: 10.0 for s in range(6)}  # seed 5 has no DDFP run: not paired
    p = paired_difference(ddfp, base)
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert p.n == 5 and p.mean == pytest.approx(3.0)
    assert (p.low, p.high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    one = paired_difference({0: 5.0}, {0: 1.0})
    assert one.n == 1 and one.mean == 4.0 and math.isnan(one.low)  # no interval from one pair


def test_goal_rows_ask_the_interval_above_zero_where_the_goal_does():
    ddfp = {s: 30.0 + s for s in range(5)}
    per_arm = {
        "ddfp": ddfp,
        "supervised": {s: v - 12 for s, v in ddfp.items()},  # +12: met (the goal is on the mean)
        "mean_teacher": {s: v - d for (s, v), d in zip(ddfp.items(), [1, 2, 3, 4, 5])},  # +3, CI [1.04, 4.96]
        "ddfp_eps0": {s: v - d for (s, v), d in zip(ddfp.items(), [-2, 3, 1, -1, 4])},  # +1, CI spans 0
        # ddfp_random has no runs yet
    }
    rows = {r["comparison"]: r for r in goal_rows(per_arm)}
    assert rows["DDFP - supervised"]["verdict"] == "met" and rows["DDFP - supervised"]["n"] == 5
    assert rows["DDFP - mean_teacher"]["verdict"] == "met"
    assert rows["DDFP - mean_teacher"]["95% CI"] == "[+1.04, +4.96]"
    assert rows["DDFP - ddfp_eps0"]["verdict"] == "NOT met"
    assert rows["DDFP - ddfp_random"]["verdict"] == "no pairs yet" and rows["DDFP - ddfp_random"]["n"] == 0
    assert rows["DDFP - ddfp_random"]["mean"] == "-"  # not "+nan"
    one = {r["comparison"]: r for r in goal_rows({"ddfp": {0: 50.0}, "supervised": {0: 30.0}})}
    assert one["DDFP - supervised"]["verdict"] == "one pair: no verdict"  # +20 on one seed is not "met"
    # Mean teacher over supervised: +9 on every seed, so the interval is a point above 0 (its goal: +5, CI above 0).
    assert rows["mean_teacher - supervised"]["verdict"] == "met" and rows["mean_teacher - supervised"]["mean"] == "+9.00"


def test_every_split_gets_the_paired_differences_of_the_main_methods():
    frame = pd.DataFrame([{"arm": arm, "split": split, "seed": seed, "val_miou": base + seed + gain}
                          for split, base in (("16", 30.0), ("32", 40.0))
                          for arm, gain in (("supervised", 0.0), ("mean_teacher", 1.0), ("ddfp", 3.0))
                          for seed in range(3)])
    rows = {(r["labels"], r["comparison"]): r for r in split_pairs(frame, ["16", "32"])}
    assert rows[(32, "DDFP - supervised")]["mean"] == "+3.00" and rows[(32, "DDFP - supervised")]["n"] == 3
    assert rows[(16, "DDFP - mean_teacher")]["mean"] == "+2.00"
    assert rows[(16, "mean_teacher - supervised")]["95% CI"] == "[+1.00, +1.00]"  # no spread: a point


def test_train_log_diagnostics_are_last_epoch_means_with_the_nll_rise(tmp_path):
    rows = [{"epoch": 0, "confident_ratio": 0.1},
            {"epoch": 2, "confident_ratio": 0.4, "nll_fit": 10.0, "nll_query": 50.0, "nll_after": 80.0},
            {"epoch": 2, "confident_ratio": 0.6, "nll_fit": 20.0, "nll_query": 70.0, "nll_after": 140.0}]
    (tmp_path / "train_log.json").write_text(json.dumps(rows))
    d = train_log_diagnostics(tmp_path / "train_log.json")
    assert d == {"confident_ratio": 0.5, "nll_fit": 15.0, "nll_query": 60.0, "nll_after": 110.0, "nll_rise": 50.0}


def test_all_labels_split_lists_every_training_image_as_labelled(tmp_path):
    src = tmp_path / "splits" / "8"
    src.mkdir(parents=True)
    (src / "labeled.txt").write_text("a.jpg a.png\n")
    (src / "unlabeled.txt").write_text("b.jpg b.png\nc.jpg c.png\n")
    (src / "val.txt").write_text("v.jpg v.png\n")
    made = all_labels_split(src, tmp_path / "work")
    assert made.name == "8"  # the metrics name the split the runs belong to
    assert (made / "labeled.txt").read_text().split("\n")[:3] == ["a.jpg a.png", "b.jpg b.png", "c.jpg c.png"]
    # Same unlabelled list: the epoch (and so the iteration budget) is the smallest split's
    assert (made / "unlabeled.txt").read_text() == (src / "unlabeled.txt").read_text()
    assert (made / "val.txt").read_text() == (src / "val.txt").read_text()
    (src / "unlabeled.txt").write_text("d.jpg\n")
    with pytest.raises(ValueError, match="unlabeled.txt.*d.jpg.*no mask"):
        all_labels_split(src, tmp_path / "work2")


def _fake_record(cfg, cell, miou, digest):
    run_cfg = arm_config(cfg, cell)
    return {"arm": cell.arm, "split": cell.split, "seed": cell.seed, "val_miou": miou, "val_miou_student": miou,
            "per_class_iou": {}, "iterations": 7, "code_digest": digest, "config": record_config(run_cfg),
            "diagnostics": {"confident_ratio": 0.5, "pl_precision": 0.9 if cell.seed else None}}


def _write_records(cfg, out, other_code=3):
    """Records of the plan with seeds 0, 1 (curve: 0), as another machine committed them."""
    for i, cell in enumerate(plan(cfg.data.splits, list(ARMS), [0, 1], [0])):
        miou = {"supervised": 20, "all_labels": 60, "ddfp": 30}.get(cell.arm, 25) + cell.seed + (cell.split == "16")
        rec = _fake_record(cfg, cell, float(miou), "0" * 64 if i < other_code else code_digest())
        path = record_path(out, cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))


def test_existing_records_are_used_and_other_code_is_named(tmp_path):
    # No data here: nothing may train.
    cfg = smoke()
    out = tmp_path / "reports"
    _write_records(cfg, out)
    result = run_ablation(cfg, tmp_path / "absent", tmp_path / "absent", None, tmp_path / "work", out, [0, 1],
                          list(ARMS), curve_seeds=[0], progress=False)
    assert result["miou"]["ddfp"]["8"] == {"0": 30.0, "1": 31.0}
    assert "3 of 23 records come from other code (00000000)" in result["provenance"]
    text = (out / "ablation.md").read_text()
    assert result["provenance"] in text
    assert re.search(r"\| DDFP - supervised +\| 2 +\| \+10\.00 ", text) and "all_labels" in text
    assert "pl_precision" in text and (out / "ablation.png").stat().st_size > 5000
    assert not (tmp_path / "work").exists()


def test_a_record_of_another_configuration_is_not_reused(tmp_path):
    cfg = smoke()
    cell = Cell("supervised", "8", 0)
    path = record_path(tmp_path, cell)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_fake_record(params.replace(cfg, {"train.lr": 0.5}), cell, 1.0, code_digest())))
    with pytest.raises(FileNotFoundError):  # it has to train, and the data is not there
        run_ablation(cfg, tmp_path / "absent", tmp_path / "absent", None, tmp_path / "work", tmp_path, [0],
                     ["supervised"], curve_seeds=[], progress=False)


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_commit_records_commits_that_file_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.name", "t")
    _git(repo, "config", "user.email", "t@t")
    (repo / "other.txt").write_text("someone's work in progress\n")
    _git(repo, "add", "other.txt")
    record = repo / "reports" / "ablation_runs" / "ddfp" / "8" / "seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}\n")
    commit_records([record], "ablation: ddfp/8/seed0")
    assert _git(repo, "log", "--format=%s").strip() == "ablation: ddfp/8/seed0"
    assert _git(repo, "show", "--name-only", "--format=").split() == ["reports/ablation_runs/ddfp/8/seed0.json"]
    assert _git(repo, "diff", "--cached", "--name-only").split() == ["other.txt"]  # still staged, not committed
    commit_records([record], "again")  # committed already: nothing to do, no error
    assert _git(repo, "log", "--format=%s").split("\n")[0] == "ablation: ddfp/8/seed0"


def test_report_only_reports_the_records_there_are_and_says_how_many_are_missing(tmp_path):
    # No data here: nothing may train. The plan has a third seed that no record holds yet.
    cfg = smoke()
    out = tmp_path / "reports"
    _write_records(cfg, out)
    result = run_ablation(cfg, tmp_path / "absent", tmp_path / "absent", None, tmp_path / "work", out, [0, 1, 2],
                          list(ARMS), curve_seeds=[0], progress=False, report_only=True)
    assert result["provenance"].startswith("**Under way: 23 of the plan's 32 runs are recorded**")
    goals = (out / "ablation_goals.md").read_text()
    assert re.search(r"\| DDFP - supervised +\| 2 +\| \+10\.00 ", goals) and "Under way: 23 of" in goals
    assert not (tmp_path / "work").exists()
    with pytest.raises(DataError, match="no record of this plan yet"):
        run_ablation(cfg, tmp_path, tmp_path, None, tmp_path / "work", tmp_path / "empty", [0], ["ddfp"],
                     curve_seeds=[], report_only=True)


def test_records_left_uncommitted_by_an_earlier_run_are_committed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (("init", "-q"), ("config", "user.name", "t"), ("config", "user.email", "t@t")):
        _git(repo, *args)
    cfg = smoke()
    _write_records(cfg, repo / "reports")  # as a run whose commits failed left them
    run_ablation(cfg, tmp_path, tmp_path, None, tmp_path / "work", repo / "reports", [0, 1], list(ARMS),
                 curve_seeds=[0], progress=False, commit=True)
    assert _git(repo, "log", "--format=%s").strip() == "ablation: records"
    assert len(_git(repo, "show", "--name-only", "--format=").split()) == 23
    assert not _git(repo, "status", "--porcelain", "reports/ablation_runs").strip()


def test_a_commit_blocked_by_another_git_process_costs_no_run(tmp_path, capsys):
    from pipeline.evidence.ablation import try_commit

    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (("init", "-q"), ("config", "user.name", "t"), ("config", "user.email", "t@t")):
        _git(repo, *args)
    record = repo / "reports" / "ablation_runs" / "ddfp" / "8" / "seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    (repo / ".git" / "index.lock").write_text("")  # what a concurrent `git add` holds
    try_commit([record], "ablation: ddfp/8/seed0")  # no exception: the run's record is kept
    assert "committed at the end" in capsys.readouterr().out and record.is_file()
    (repo / ".git" / "index.lock").unlink()
    commit_records([record], "ablation: records")
    assert _git(repo, "log", "--format=%s").strip() == "ablation: records"


def test_commit_outside_a_git_work_tree_is_refused_before_training(tmp_path):
    from pipeline.errors import UsageError

    with pytest.raises(UsageError, match="--commit"):
        run_ablation(smoke(), tmp_path, tmp_path, None, tmp_path / "work", tmp_path / "out", [0], ["ddfp"],
                     curve_seeds=[], progress=False, commit=True)


def test_unknown_arm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--arms: unknown"):
        run_ablation(smoke(), tmp_path, tmp_path, None, tmp_path, tmp_path, [0], ["ddfp", "cps"])


@pytest.mark.slow
def test_every_arm_trains_once_and_writes_its_record(tiny_data, tmp_path):
    cfg = params.replace(tiny_cfg(**{"train.max_iters": 2}), {"data.splits": ["8"]})
    out = tmp_path / "out"
    args = (cfg, tiny_data / "dataset", tiny_data / "splits", None, tmp_path / "work", out, [0], list(ARMS))
    result = run_ablation(*args, curve_seeds=[], progress=False)
    records = {c.arm: json.loads(record_path(out, c).read_text()) for c in plan(["8"], list(ARMS), [0], [])}
    assert set(records) == set(ARMS)
    for arm, rec in records.items():
        assert rec["code_digest"] == code_digest() and rec["iterations"] == 2, arm
        assert 0 <= rec["diagnostics"]["pl_confident_share"] <= 1, arm  # scored against the unlabelled masks
        assert "NaN" not in record_path(out, Cell(arm, "8", 0)).read_text()  # strict JSON: an empty ratio is null
        assert result["miou"][arm]["8"] == {"0": rec["val_miou"]}
    assert records["ddfp_eps0"]["config"]["perturb.eps"] == 0.0
    assert records["ddfp_random"]["config"]["perturb.direction"] == "random"
    assert records["ddfp"]["diagnostics"]["pl_model"] == "teacher"
    assert records["supervised"]["diagnostics"]["pl_model"] == "student"
    assert "DDFP - ddfp_random" in (out / "ablation.md").read_text()
    assert not list((tmp_path / "work").rglob("last.pt"))  # checkpoints dropped once recorded
    stamp = {p: p.stat().st_mtime_ns for p in (out / "ablation_runs").rglob("*.json")}
    assert run_ablation(*args, curve_seeds=[], progress=False)["miou"] == result["miou"]  # nothing retrained
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "ablation_runs").rglob("*.json")}


@pytest.mark.slow
def test_parallel_workers_record_and_commit_each_run_as_it_ends(tiny_data, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (("init", "-q"), ("config", "user.name", "t"), ("config", "user.email", "t@t")):
        _git(repo, *args)
    cfg = params.replace(tiny_cfg(**{"train.max_iters": 2}), {"data.splits": ["8"]})
    arms = ["supervised", "ddfp"]
    result = run_ablation(cfg, tiny_data / "dataset", tiny_data / "splits", None, tmp_path / "work", repo / "reports",
                          [0, 1], arms, curve_seeds=[], progress=False, commit=True, jobs=2)
    cells = plan(["8"], arms, [0, 1], [])
    assert sorted(_git(repo, "log", "--format=%s").strip().split("\n")) == sorted(
        f"ablation: {c.arm}/8/seed{c.seed}" for c in cells)  # one commit per run, made by this process
    for c in cells:
        record = json.loads(record_path(repo / "reports", c).read_text())
        assert record["iterations"] == 2 and result["miou"][c.arm]["8"][str(c.seed)] == record["val_miou"]


def test_cli_reads_the_records_and_names_other_code(tmp_path):
    cfg = params.replace(params.load(profile="smoke"), {"model.pretrained": False})
    _write_records(cfg, tmp_path / "reports", other_code=1)
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    run = subprocess.run([DDFP, "ablation", "--profile", "smoke", "--set", "model.pretrained=false", "--data", empty,
                          "--splits-dir", empty, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "reports"),
                          "--seeds", "0,1", "--curve-seeds", "0"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "1 of 23 records come from other code (00000000)" in run.stdout


def test_every_committed_record_is_of_the_demo_profile_s_arm_config():
    # What `make ablation` in a clone reuses: a record whose values differ (a new key, a run value
    # counted as a result) would be trained again, hours on 2 cores.
    from pipeline.evidence.ablation import same_values
    from tests.helpers.project import ROOT

    cfg = params.load(profile="demo")
    records = sorted((ROOT / "reports" / "ablation_runs").rglob("seed*.json"))
    assert records
    for path in records:
        arm, split, seed = path.parts[-3], path.parts[-2], int(path.stem.removeprefix("seed"))
        assert same_values(json.loads(path.read_text())["config"], record_config(arm_config(cfg, Cell(arm, split, seed)))), path


def test_a_key_added_after_a_record_matches_only_at_its_default():
    from pipeline.evidence.ablation import same_values

    current = record_config(smoke())
    older = {k: v for k, v in current.items() if k != "train.global_batch"}  # trained before the key existed
    assert current["train.global_batch"] is None and same_values(older, current)
    assert not same_values(older, record_config(params.replace(smoke(), {"train.global_batch": 8})))
    assert not same_values({**older, "perturb.eps": 1.0}, current)
    assert "run.channels_last" not in current and "eval.model" in current  # a run value, a scoring value
