"""`ddfp readme`: the README's result sections, copied from the reports that produced them.

A block between `<!-- include reports/<file>.md -->` and `<!-- end include -->` is replaced by that
report without its title line, its relative links rebased onto the report's folder. So the numbers a
reader sees in the README are the reports' numbers, never a hand-made copy; `--check` (and the test
suite) fails when a block and its report disagree.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import DataError
from pipeline.files import write_text_atomic

BLOCK = re.compile(r"(<!-- include (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)
LINK = re.compile(r"\]\((?!https?://|/|#)(?P<target>[^)]+)\)")


def _included(path: str, root: Path) -> str:
    report = root / path
    if not report.is_file():
        raise DataError(f"{path}: no such report (the README includes it); make it first "
                        f"(`make demo` writes reports/results.md, `make ablation` reports/ablation.md)")
    lines = report.read_text().splitlines(keepends=True)
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "".join(lines).strip("\n") + "\n"
    folder = Path(path).parent.as_posix()
    return LINK.sub(lambda m: f"]({folder}/{m['target']})", body)


def render(text: str, root: Path) -> str:
    """text with every include block holding its report's current content."""
    return BLOCK.sub(lambda m: m.group(1) + _included(m["path"], root) + m.group(4), text)


def stale_blocks(readme: Path, root: Path) -> list[str]:
    """The reports whose README block differs from them."""
    text = readme.read_text()
    return [m["path"] for m in BLOCK.finditer(text) if m["body"] != _included(m["path"], root)]


def update(readme: Path, root: Path) -> list[str]:
    """Rewrite the stale blocks; returns their reports."""
    stale = stale_blocks(readme, root)
    if stale:
        write_text_atomic(readme, render(readme.read_text(), root))
    return stale


def run_readme(readme: Path, check: bool) -> str:
    """`ddfp readme`: update the include blocks (or, with check, fail naming the stale ones)."""
    if check:
        stale = stale_blocks(readme, readme.parent)
        if stale:
            raise DataError(f"{readme}: the blocks of {', '.join(stale)} differ from the reports; run `ddfp readme`")
        return f"{readme}: up to date"
    stale = update(readme, readme.parent)
    return f"{readme}: " + (f"updated from {', '.join(stale)}" if stale else "up to date")
