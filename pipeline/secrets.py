"""Credentials never reach logs, params, reports, dvc.lock or job scripts.

They come from the environment: a configured URL references them as ``${VAR}``, and `expand_env`
resolves the reference only where the URL is used, so every config that is logged, pickled or
copied into dvc.lock holds the reference, never the value. Everything shown goes through `redact`.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote_plus

from ddfp.config import ConfigError

MASK = "***"
# A URL in free text: a scheme, "://", then anything up to white space or a quote; a password may hold
# any other character, so the match must not stop at "/", "@", ":" or "#".
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_ENV_REF = re.compile(r"\$\{(\w+)\}")
# Query (and fragment) parameters whose value is a credential: OAuth tokens and codes, the signatures
# and credentials of signed URLs (S3 X-Amz-*, GCS X-Goog-*, Azure SAS sig), API keys, passwords.
_SECRET_PARAM = re.compile(
    r"(?:.*[^A-Za-z0-9])?(?:token|sig|signature|credential|api_?key|key|password|passwd|pwd|secret|auth|code)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every URL in it shown without its secrets: the password becomes *** whatever it holds
    (the user name stays, it helps debugging), and so do the values of credential query parameters."""
    return _URL.sub(lambda match: _redact_url(match.group()), text)


def _redact_url(url: str) -> str:
    # The query and fragment split as urllib.parse.urlsplit splits them: at the first "#", then "?".
    rest, hash_mark, fragment = url.partition("#")
    rest, question_mark, query = rest.partition("?")
    return _mask_userinfo(f"{rest}{question_mark}{_mask_params(query)}{hash_mark}{_mask_params(fragment)}")


def _mask_params(params: str) -> str:
    pairs = [pair.partition("=") for pair in params.split("&")]
    return "&".join(f"{name}={MASK}" if eq and value and _SECRET_PARAM.fullmatch(unquote_plus(name))
                    else f"{name}{eq}{value}" for name, eq, value in pairs)


def _mask_userinfo(url: str) -> str:
    """user:password@host -> user:***@host, the userinfo ending at the LAST "@" of the URL.

    urllib ends the userinfo at the last "@" before the first "/", "?" or "#", but SQLAlchemy (sweep
    storage, MLflow stores) reads a raw "/", "?" or "#" as part of the password; ending it at the last
    "@" anywhere hides what either parser takes for a password. A user part holding "/", "?" or "#" is
    a path, not a user: nothing is hidden then. The price: a host:port URL with an "@" later on (in
    its path or query) shows that part as *** too.
    """
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon and password) or any(c in user for c in "/?#"):
        return url
    return f"{scheme}{sep}{user}:{MASK}@{host}"


def redact_tree(tree: Any) -> Any:
    """A copy of a nested config (dicts, lists, tuples) with every string redacted."""
    if isinstance(tree, dict):
        return {k: redact_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [redact_tree(v) for v in tree]
    return redact(tree) if isinstance(tree, str) else tree


def redact_values(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a flat mapping (params of a run) with every string value, and list of strings, redacted."""
    return redact_tree(values)


def expand_env(text: str, key: str) -> str:
    """`text` with every ${VAR} replaced by the environment's value (a bare $ stays as it is).

    The result holds the secrets: use it for the connection and drop it; store and show `text`.
    ConfigError names `key` and every variable that is not set.
    """
    missing = sorted({name for name in _ENV_REF.findall(text) if name not in os.environ})
    if missing:
        raise ConfigError(f"{key}: environment variable(s) {', '.join(missing)} not set")
    return _ENV_REF.sub(lambda match: os.environ[match.group(1)], text)


def refuse_literal_secret(text: str, key: str, why: str) -> None:
    """ConfigError if `text` holds a credential itself rather than ${VAR} references to one."""
    bare = _ENV_REF.sub("", text)
    if redact(bare) != bare:
        raise ConfigError(f"{key}: {redact(text)} holds a credential {why}; put the password in an environment "
                          "variable: ${VAR}, as in https://user:${PASSWORD}@host/path")


def first_line(err: BaseException) -> str:
    """An error's first line (at most 300 characters), passwords redacted: for one-line warnings."""
    return redact(str(err)).splitlines()[0][:300] if str(err) else type(err).__name__
