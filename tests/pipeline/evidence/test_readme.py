"""README sections copied from reports/ by `ddfp readme`: never edited by hand, never stale."""


import subprocess
from pathlib import Path

import pytest

from pipeline.errors import DataError
from pipeline.evidence.readme import render, stale_blocks
from tests.helpers.project import ROOT

README = """# Project

Intro.

<!-- include reports/ablation.md -->
old numbers
<!-- end include -->

Tail.
"""


def test_an_include_block_takes_the_report_without_its_title_and_with_its_links_rebased(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "ablation.md").write_text("# Ablation\n\n| a |\n|---|\n| 1 |\n\n![curve](ablation.png)\n")
    out = render(README, tmp_path)
    assert "old numbers" not in out
    assert "| 1 |" in out and "![curve](reports/ablation.png)" in out
    assert "# Ablation" not in out  # the README has its own heading
    assert out.startswith("# Project\n\nIntro.\n") and out.endswith("Tail.\n")
    assert render(out, tmp_path) == out  # idempotent


def test_a_missing_report_is_named(tmp_path):
    with pytest.raises(DataError, match="reports/ablation.md"):
        render(README, tmp_path)


def committed(tmp_path: Path) -> Path:
    """The README and reports as the checkout's last commit holds them, in tmp_path (the working tree
    where this is no git checkout). `make demo` rewrites reports/results.md with this machine's
    numbers, so `make demo` then `make test` must judge what is committed, not what the demo just wrote."""
    if not (ROOT / ".git").exists():
        return ROOT
    names = subprocess.run(["git", "ls-files", "README.md", "reports/*.md"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in names:
        shown = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=ROOT, capture_output=True, check=True).stdout
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(shown)
    return tmp_path


def test_the_committed_readme_shows_the_committed_reports(tmp_path):
    # A hand edit of a generated block, or a report regenerated without `ddfp readme`, fails here.
    root = committed(tmp_path)
    assert stale_blocks(root / "README.md", root) == []
