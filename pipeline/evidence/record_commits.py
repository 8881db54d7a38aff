"""Committing the ablation's records as they land: each finished run's record is committed alone
(`git commit --only`), so whatever else is staged in the work tree stays as it was, and a rerun in
any clone resumes from what was committed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.errors import DataError, UsageError


def commit_records(paths: list[Path], message: str) -> None:
    """Commit these files, if they changed, and nothing else (git commit --only: whatever else is
    staged stays staged and uncommitted)."""
    names = [str(p.resolve()) for p in paths]
    cwd = paths[0].parent
    if not _git(cwd, "status", "--porcelain", "--", *names).strip():
        return
    _git(cwd, "add", "--", *names)
    _git(cwd, "commit", "-q", "--only", "-m", message, "--", *names)


def try_commit(paths: list[Path], message: str) -> None:
    """commit_records, where a failure (another git process holding the index) costs no training: the
    record stays on disk, and the ablation's last step commits every record still uncommitted."""
    try:
        commit_records(paths, message)
    except DataError as err:
        print(f"ablation: not committed yet ({err}); committed at the end", flush=True)


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"{cwd}: `git {args[0]}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def check_commit(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=out, capture_output=True, text=True)
    if done.stdout.strip() != "true":
        raise UsageError(f"--commit: {out} is not inside a git work tree")


__all__ = ["check_commit", "commit_records", "try_commit"]
