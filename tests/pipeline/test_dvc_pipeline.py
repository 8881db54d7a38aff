"""`dvc repro` of the smoke profile in a real git repo: stages, caching, params, code deps, kill and
resume; and the stages' code deps checked against what their commands import."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from ddfp import config
from pipeline import params
from pipeline.stages.inputs import resolve_inputs
from tests.helpers.project import ROOT, ran_stages, run, smoke_project

slow = pytest.mark.slow


# The smoke profile's splits x every method beside DDFP but mean teacher (DDFP's step without its
# parts): one train and one evaluate stage each.
SMOKE_METHODS = ("supervised", "fixmatch", "unimatch", "ddfp")
MATRIX = {f"{stage}@{split}-{method}" for stage in ("train", "evaluate") for split in ("8", "16")
          for method in SMOKE_METHODS}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The smoke project (32 px crops) with SMOKE_METHODS as its method axis."""
    dest = tmp_path_factory.mktemp("project")

    def edit(values: dict) -> None:
        values["data"].update(crop_size=32)
        values["methods"] = list(SMOKE_METHODS)

    return dest, smoke_project(dest, edit)
DATA_STAGES = {"download", "splits", "weights"}


def test_methods_default_to_the_baseline_and_ddfp_and_are_distinct():
    assert params.load(profile="demo").methods == ["supervised", "ddfp"]
    smoke = params.load(profile="smoke")
    for bad in ([], ["ddfp", "supervised", "ddfp"], ["cps"]):
        with pytest.raises(config.ConfigError, match=r"^invalid configuration:\n  methods"):
            params.replace(smoke, {"methods": bad})


def test_the_pipeline_trains_and_evaluates_every_split_and_method(project):
    dest, env = project
    listed = set(run(["dvc", "stage", "list", "--name-only"], dest, env).stdout.split())
    assert listed == DATA_STAGES | MATRIX | {"report"}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = stages["train"]
    assert "--set train.method=${item.method}" in train["cmd"] and "--out runs/${item.split}/${item.method}" in train["cmd"]
    assert "--out metrics/${item.split}/${item.method}.json" in stages["evaluate"]["cmd"]
    assert "methods" in stages["report"]["params"]


@slow
def test_repro_runs_all_then_nothing_then_only_what_eps_touches(project):
    dest, env = project
    first = run(["dvc", "repro"], dest, env).stdout
    assert ran_stages(first) == DATA_STAGES | MATRIX | {"report"}
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], dest, env).stdout)
    shown = json.dumps(metrics)
    assert all(f"metrics/{s}/{m}.json" in shown for s in ("8", "16") for m in SMOKE_METHODS), shown
    for split in ("8", "16"):
        for method in SMOKE_METHODS:
            assert json.loads((dest / "metrics" / split / f"{method}.json").read_text())["method"] == method
    report = (dest / "reports" / "results.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| labels"))
    gains = [f"{m} - supervised" for m in SMOKE_METHODS[1:]]
    assert [c.strip() for c in header.strip("|").split("|")] == ["labels", *SMOKE_METHODS, *gains]
    assert re.search(r"^\|\s*8\s*\|", report, re.M) and re.search(r"^\|\s*16\s*\|", report, re.M)
    second = run(["dvc", "repro"], dest, env).stdout
    assert ran_stages(second) == set()
    assert_lean_cache(dest, env)
    # Every plot renders; the top-level ones overlay every run (8) and every method (4).
    plots = json.loads(run(["dvc", "plots", "show", "--json"], dest, env).stdout)
    assert not plots.get("errors"), plots["errors"]
    series = {name: {r["series"] for r in plots["data"][name][0]["content"]["data"]["values"]}
              for name in ("val_miou_vs_iteration", "miou_vs_labels")}
    assert series == {"val_miou_vs_iteration": {f"{m} / {s}" for m in SMOKE_METHODS for s in ("8", "16")},
                      "miou_vs_labels": set(SMOKE_METHODS)}, series
    values = (dest / "params.yaml").read_text()
    (dest / "params.yaml").write_text(values.replace("eps: 4.0", "eps: 2.0"))
    status = json.loads(run(["dvc", "status", "--json"], dest, env).stdout)
    changed = {name for name in status if not name.endswith(".dvc")}
    assert {"train@8-ddfp", "train@16-ddfp"} <= changed
    assert not changed & {"download", "splits", "weights"}
    (dest / "params.yaml").write_text(values)


@slow
def test_killed_training_resumes_from_its_checkpoint(project):
    dest, env = project
    run(["dvc", "repro"], dest, env)  # everything current (a no-op after the test above)
    model = dest / "models" / "8" / "ddfp" / "model.pt"
    reference = torch.load(model, weights_only=True)["weights"]
    ckpt = dest / "runs" / "8" / "ddfp" / "last.pt"
    ckpt.unlink()  # no DVC output (the resume state is not cached): DVC sees nothing changed
    assert "train@8-ddfp" not in changed_stages(dest, env)
    train = ["dvc", "repro", "--force", "train@8-ddfp"]  # trains from scratch: there is no last.pt
    proc = subprocess.Popen(train, cwd=dest, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists() and proc.poll() is None, "training ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = run(train, dest, env)
    assert "resumed" in out.stdout + out.stderr
    resumed = torch.load(model, weights_only=True)["weights"]
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert ran_stages(run(["dvc", "repro"], dest, env).stdout) <= {"evaluate@8-ddfp", "report"}


def assert_lean_cache(dest: Path, env: dict[str, str]) -> None:
    """DVC's cache holds each run's exported model, never its resume state; the curves are git-tracked."""
    cached = {p.parent.name + p.name for p in (dest / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()}
    for split in ("8", "16"):
        for method in SMOKE_METHODS:
            model, resume = dest / "models" / split / method / "model.pt", dest / "runs" / split / method / "last.pt"
            assert model.is_file() and resume.is_file()
            assert 3 * model.stat().st_size < resume.stat().st_size  # ddfp: no student, flow or optimisers
            assert md5_of(model) in cached and md5_of(resume) not in cached
            for curve in ("train_log.json", "val_log.json"):
                path = f"models/{split}/{method}/{curve}"
                assert run(["git", "check-ignore", "-q", path], dest, env, check=False).returncode == 1, path
    assert run(["git", "check-ignore", "-q", "models/8/ddfp/model.pt"], dest, env, check=False).returncode == 0


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def changed_stages(dest, env) -> set[str]:
    status = json.loads(run(["dvc", "status", "--json"], dest, env).stdout)
    return {name for name in status if not name.endswith(".dvc")}


@contextmanager
def appended(path: Path, line: str):
    """The file with one more line, restored byte for byte afterwards."""
    original = path.read_bytes()
    path.write_bytes(original + line.encode())
    try:
        yield
    finally:
        path.write_bytes(original)


# The stages that run the method's code (evaluate rebuilds the model from ddfp/ too).
METHOD_STAGES = MATRIX


@slow
def test_a_code_edit_marks_exactly_the_stages_that_run_that_code(project):
    dest, env = project
    run(["dvc", "repro"], dest, env)  # everything current (a no-op after the tests above)
    assert changed_stages(dest, env) == set()
    with appended(dest / "ddfp" / "inference.py", "# a comment\n"):  # trains and evaluates
        assert changed_stages(dest, env) == METHOD_STAGES
    with appended(dest / "ddfp" / "teacher.py", "# a comment\n"):  # only trains (evaluate follows its checkpoint)
        assert changed_stages(dest, env) == {s for s in METHOD_STAGES if s.startswith("train@")}
    with appended(dest / "pipeline" / "stages" / "report.py", "# a comment\n"):
        assert changed_stages(dest, env) == {"report"}
    with appended(dest / "pipeline" / "stages" / "weights.py", "# a comment\n"):
        assert changed_stages(dest, env) == {"weights"}
    assert changed_stages(dest, env) == set()


@slow
def test_settings_that_leave_the_weights_alone_retrain_nothing(project):
    dest, env = project
    values = (dest / "params.yaml").read_text()
    for key in ("log_every", "ckpt_every", "eval_every"):
        assert re.search(rf"^  {key}: \d+$", values, re.M), key
    edited = re.sub(r"^  (log_every|ckpt_every|eval_every): \d+$", r"  \1: 7", values, flags=re.M)
    (dest / "params.yaml").write_text(edited.replace("launcher: local", "launcher: slurm"))
    try:
        assert not changed_stages(dest, env) & METHOD_STAGES
    finally:
        (dest / "params.yaml").write_text(values)


@slow
def test_a_sweep_s_inputs_come_from_dvc_or_a_folder_of_their_own(project):
    dest, env = project
    data = dest / "data"
    before = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}
    own = params.load(dest / "params.yaml")  # the pipeline's profile: DVC's outputs, confirmed by `dvc repro`
    assert resolve_inputs(own, ["8"], root=dest).splits == data / "splits"
    other = params.replace(own, {"data.split_seed": 1})  # what `ddfp sweep --set data.split_seed=1` needs
    got = resolve_inputs(other, ["8"], root=dest)
    assert got.splits.parent.parent == data / "profiles" and (got.splits / "8" / "labeled.txt").is_file()
    assert {p: p.read_bytes() for p in before} == before and changed_stages(dest, env) == set()


@slow
def test_a_method_edit_retrains_from_scratch(project):
    """A finished checkpoint of other code is not "found finished": DVC reruns the stage and it trains.
    Last in the module: it leaves train@8-supervised locked with the edited code."""
    dest, env = project
    log = dest / "runs" / "8" / "supervised" / "train_log.json"
    before = log.stat().st_mtime_ns
    with appended(dest / "ddfp" / "step.py", "# a comment\n"):
        out = run(["dvc", "repro", "train@8-supervised"], dest, env)
        assert ran_stages(out.stdout) == {"train@8-supervised"}
        assert "resumed" not in out.stdout + out.stderr
        assert log.stat().st_mtime_ns != before  # trained again, not found finished
        assert "train@8-supervised" not in changed_stages(dest, env)


# The modules each stage's `ddfp` subcommand imports (pipeline/cli.py's cmd_* delegate to them).
STAGE_MODULES = {"download": ["pipeline.stages.download", "pipeline.stages.synthetic"], "splits": ["pipeline.stages.splits"],
                 "weights": ["pipeline.stages.weights"], "train": ["pipeline.stages.train", "pipeline.train.fit", "pipeline.train.export",
                                                                   "pipeline.slurm"],
                 "evaluate": ["pipeline.stages.evaluate"], "report": ["pipeline.stages.report"]}
# In ddfp/ but not imported by train: the dataset generator, whose output reaches it through
# data/dataset anyway (listing ddfp/ whole keeps its list short).
FOLDER_EXTRAS = {"ddfp/data/synthetic.py"}
IMPORTED = """
import importlib, sys
from pathlib import Path
root = Path.cwd()
for name in sys.argv[1:]:
    importlib.import_module(name)
files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
print("\\n".join(sorted(str(f.relative_to(root)) for f in files if f.parent.is_relative_to(root / "ddfp")
                   or f.parent.is_relative_to(root / "pipeline"))))
"""


def imported_code(modules: list[str]) -> set[str]:
    """Project files a fresh interpreter loads for `modules`, minus packages' empty __init__.py."""
    out = subprocess.run([sys.executable, "-c", IMPORTED, *modules], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    return {f for f in out if not (f.endswith("__init__.py") and not (ROOT / f).read_text().count("import"))}


def test_each_stage_lists_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, modules in STAGE_MODULES.items():
        deps = stages[name].get("do", stages[name])["deps"]
        code = {d for d in deps if d.startswith(("ddfp", "pipeline"))}
        imported = imported_code(modules)
        folders = {d for d in code if (ROOT / d).is_dir()}
        uncovered = {f for f in imported if f not in code and not any(f.startswith(f"{d}/") for d in folders)}
        assert not uncovered, f"dvc.yaml stage {name}: add {sorted(uncovered)} to its deps"
        stale = {d for d in code if d not in imported and not any(f.startswith(f"{d}/") for f in imported)}
        assert not stale, f"dvc.yaml stage {name}: {sorted(stale)} listed but not imported"
        for folder in folders:  # a folder is listed only where all of it is imported
            whole = {str(f.relative_to(ROOT)) for f in (ROOT / folder).rglob("*.py")}
            assert whole - imported <= {f for f in whole if f.endswith("__init__.py")} | FOLDER_EXTRAS, (name, folder)


def test_the_train_stage_reads_exactly_the_values_that_can_change_a_run():
    # One list decides this and the resume fingerprint (pipeline.params.NOT_TRAINING). The values
    # left out reach the stage another way: train.method is the matrix item on its command line, the
    # generated dataset's and the split lists' values come in through data/dataset and data/splits.
    # eval.model is the one value besides them: which network the stage exports (model.pt).
    declared = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"]) - {"eval.model"}
    keys = set(params.load(profile="smoke").training_values())
    via_deps = {k for k in keys if k.startswith("synthetic.")} | {"train.method", "data.splits", "data.split_seed"}
    read = {k for k in keys if k in declared or k.split(".")[0] in declared}
    assert read == keys - via_deps
    assert all(d in keys or any(k.startswith(f"{d}.") for k in keys) for d in declared), declared


@slow
def test_an_experiment_in_a_temporary_copy_trains_what_changed_and_keeps_its_curves(project):
    # A temporary experiment (what `dvc queue` runs) has no runs/ folder: the unchanged stages' outputs
    # come from the cache, the changed ones train from scratch, and the curves come back with it.
    dest, env = project
    run(["dvc", "repro"], dest, env)
    # What a user commits after `dvc repro`: dvc.lock, metrics/, the curves in models/ (a temporary
    # experiment starts from the last commit; an uncached output not in it is missing there).
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"]):
        run(cmd, dest, env)
    # One target (and what it depends on): every matrix train stage reads the perturb section, and
    # eight smoke trainings would add minutes without testing more.
    out = run(["dvc", "exp", "run", "--temp", "-n", "eps2", "-S", "perturb.eps=2.0", "evaluate@8-ddfp"], dest, env)
    ran = ran_stages(out.stdout)
    assert ran == {"train@8-ddfp", "evaluate@8-ddfp"}, out.stdout
    assert not ran & DATA_STAGES  # checked out from the cache
    assert "eps: 4.0" in (dest / "params.yaml").read_text()  # the workspace is left as it was
    shown = json.loads(run(["dvc", "exp", "show", "--json"], dest, env).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == "eps2"]
    assert len(exps) == 1, json.dumps(shown)[:2000]
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["perturb"]["eps"] == 2.0
    evaluated = data["metrics"]["metrics/8/ddfp.json"]["data"]
    assert evaluated["method"] == "ddfp" and 0 <= evaluated["val_miou"] <= 100
    base = json.loads((dest / "metrics" / "8" / "ddfp.json").read_text())
    assert evaluated["run_id"] != base["run_id"]  # a run of its own, not the workspace's
    # Its loss curve beside the workspace's: the perturbation's step (2 here, 4 there) changes the loss.
    target = "models/8/ddfp/train_log.json"
    plots = json.loads(run(["dvc", "plots", "diff", "eps2", "--json", "--targets", target], dest, env).stdout)
    rows = [r for spec in plots["data"][target] for r in spec["content"]["data"]["values"]]
    curves = {rev: [r["loss"] for r in rows if r["rev"] == rev] for rev in ("workspace", "eps2")}
    assert curves["eps2"] and len(curves["eps2"]) == len(curves["workspace"]), curves
    assert curves["eps2"] != curves["workspace"], curves
