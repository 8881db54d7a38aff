"""Skipping a service test whose system packages are absent, and the reasons, for the end-of-run summary."""

import os

import pytest

# Why service tests were skipped on this machine; every test skipped for one of these reasons
# (also those skipped through an already-failed session fixture) is named again at the very end.
SERVICE_REASONS: set[str] = set()


def require_service(missing: str | None) -> None:
    """Skip a service test whose system packages are absent, on a developer's machine only. In CI
    (`.ci/run` sets CI=1; `make test` installs the packages as root) a missing package is a failure."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {missing}")
    SERVICE_REASONS.add(missing)  # so the end-of-run summary names every test skipped for it
    pytest.skip(missing)
