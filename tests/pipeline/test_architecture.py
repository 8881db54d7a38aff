"""The layering of docs/architecture.md, checked from the code itself: the method library knows no
files, trackers, clusters or sweeps; modules keep their size budget; imports form no cycle."""

import ast
from pathlib import Path

from tests.helpers.project import ROOT

SOURCES = sorted((ROOT / "ddfp").rglob("*.py")) + sorted((ROOT / "pipeline").rglob("*.py"))

# What the method library must not reach: the orchestration, trackers, clusters, sweeps, processes.
FORBIDDEN_IN_DDFP = ("pipeline", "mlflow", "optuna", "submitit", "dvc", "yaml", "torch.distributed", "subprocess",
                     "shutil", "tempfile", "requests")
# File writes and reads other than the images a dataset is handed.
FILE_CALLS = {"open", "write_text", "write_bytes", "read_text", "read_bytes", "save", "load", "mkdir", "unlink"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_method_library_imports_no_orchestration():
    bad = {}
    for path in (p for p in SOURCES if p.is_relative_to(ROOT / "ddfp")):
        hits = {m for m in imports(path) if m.startswith(FORBIDDEN_IN_DDFP)}
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert not bad


def test_the_method_library_reads_and_writes_no_files_but_the_images_it_is_handed():
    calls = {}
    for path in (p for p in SOURCES if p.is_relative_to(ROOT / "ddfp")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in FILE_CALLS:
                    calls.setdefault(str(path.relative_to(ROOT)), []).append(f"{name}:{node.lineno}")
    # Image.open in the dataset and the mask reader: the files a caller hands the library.
    allowed = {"ddfp/data/dataset.py", "ddfp/data/masks.py"}
    assert {k: v for k, v in calls.items() if k not in allowed} == {}
    for path in allowed:
        assert all(c.startswith("open:") for c in calls.get(path, [])), calls[path]


def test_every_module_keeps_its_size_budget():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in SOURCES}
    assert sizes["ddfp/config.py"] < 250
    assert {k: v for k, v in sizes.items() if v > 300} == {}


def test_project_imports_form_no_cycle():
    names = {module_name(p): p for p in SOURCES}
    graph = {m: {i for i in imports(p) if i in names and i != m} for m, p in names.items()}
    # A package's __init__ is imported by each of its modules; it is empty here, so it adds no edge.
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, " -> ".join(stack + [m, n])
            if n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def method_name_comparisons(path: Path, names: set[str]) -> list[str]:
    """Comparisons that test a method by its name: `x == "ddfp"`, `m in ("supervised", ...)`,
    `{"supervised", "ddfp"} <= ...`, or anything compared with a `.method` attribute."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        named = any(isinstance(c, ast.Constant) and c.value in names
                    for side in sides for c in ast.walk(side))
        by_method = any(isinstance(s, ast.Attribute) and s.attr == "method" for side in sides for s in ast.walk(side))
        if named or by_method:
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return hits


def test_no_code_tests_a_method_by_its_name_outside_the_method_table():
    # What a method uses is its row in ddfp.methods.METHODS; a name test elsewhere is a seam that a
    # new method would have to find and edit.
    from ddfp.methods import METHODS

    hits = [h for p in SOURCES if p != ROOT / "ddfp" / "methods.py" for h in method_name_comparisons(p, set(METHODS))]
    assert hits == []


def test_the_method_name_check_finds_a_name_test(tmp_path):
    probe = ROOT / "ddfp" / "_probe_for_the_name_check.py"
    try:
        probe.write_text('def f(cfg):\n    return cfg.train.method == "x" or cfg in ("ddfp", "y")\n')
        assert len(method_name_comparisons(probe, {"ddfp"})) == 2
    finally:
        probe.unlink()
