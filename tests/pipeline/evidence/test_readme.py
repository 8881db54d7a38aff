"""README sections copied from reports/ by `ddfp readme`: never edited by hand, never stale."""


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


def test_the_committed_readme_shows_the_committed_reports():
    # A hand edit of a generated block, or a report regenerated without `ddfp readme`, fails here.
    assert stale_blocks(ROOT / "README.md", ROOT) == []
