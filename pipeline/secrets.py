"""Credentials never reach logs, params, reports or job scripts: every URL is shown redacted."""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@host -> scheme://user:***@host (the user name stays: it helps debugging).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?=@)")


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _URL_PASSWORD.sub(r"\g<head>***", text)


def redact_values(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a flat mapping with every string value (and list of strings) redacted."""
    def one(v: Any) -> Any:
        if isinstance(v, str):
            return redact(v)
        if isinstance(v, (list, tuple)):
            return [one(x) for x in v]
        return v

    return {k: one(v) for k, v in values.items()}
