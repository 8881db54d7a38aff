"""The one atomic write: what it leaves on disk."""

import os

from pipeline.files import atomic_directory, write_json_atomic, write_text_atomic


def test_a_written_file_gets_the_permissions_of_a_plain_open(tmp_path):
    # mkstemp creates its temporary file 0600; renamed as it is, a metrics file or figure would be
    # unreadable to the rest of a group sharing the project (a cluster's project folder).
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "x")
        write_json_atomic({"a": 1}, tmp_path / "m.json")
        with atomic_directory(tmp_path / "dataset") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    for name in ("report.md", "m.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "dataset").stat().st_mode & 0o777 == 0o755
