"""The docs point at code that exists: every `path: name` that docs/deviations.md cites."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def defined_names(path: Path) -> set[str]:
    """Functions, classes, methods (also as Class.method) and module-level names of a Python file."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names |= {item.name, f"{node.name}.{item.name}"}
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(f"{node.name}.{item.target.id}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def cited_places(text: str) -> list[tuple[str, str | None]]:
    """(path, name or None) for every backticked place after a *Where:* (a bare `name` belongs to
    the last path named before it)."""
    places = []
    for where in re.findall(r"\*Where:\*(.*?)(?:\n\n|\n- |\n\d+\. |$)", text, flags=re.S):
        current = None
        for token in re.findall(r"`([^`]+)`", where):
            path, _, name = token.partition(": ")
            if "/" in path or re.fullmatch(r"[\w.-]+\.(py|yaml|md|sh|toml|txt)", path):
                current = path
                places.append((path, name or None))
            elif current is not None:
                places.append((current, token))
    return places


def test_every_place_the_deviations_cite_exists():
    places = cited_places((ROOT / "docs" / "deviations.md").read_text())
    assert len(places) > 40
    missing = []
    for path, name in places:
        file = ROOT / path
        if not file.exists():
            missing.append(f"{path} (no such file)")
        elif name and file.suffix == ".py":
            for part in (n.strip() for n in name.split(",")):
                if part.split("(")[0] not in defined_names(file):
                    missing.append(f"{path}: {part}")
    assert missing == []
