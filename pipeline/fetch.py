"""Downloads that verify and resume (archives are unpacked by pipeline.archive).

A file reaches ``dest`` only after its checksum verifies: bytes stream into ``dest.part`` (which a later
run resumes with an HTTP Range request) and a wrong checksum deletes that part. A file with no pinned
checksum is resumed only while the server's validators match those its part started from
(pipeline.part_record); otherwise it is fetched again from the start. Archives are checked
member by member before anything is written, unpacked into a temporary folder beside the target and
only then moved in, so a refused or broken archive leaves the target as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import requests
from tqdm import tqdm

from pipeline.errors import DataError
from pipeline.part_record import discard, load_record, start_record, total_length
from pipeline.secrets import redact

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Small network reads: a dropped connection loses the unfinished read, so at most this much is refetched.
NET_CHUNK = 1 << 16
# Failures of the connection, worth another try; an HTTP 4xx answer is not.
RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DownloadError(DataError):
    """A file could not be fetched (the message names it)."""


class ChecksumError(DownloadError):
    """The fetched bytes are not the pinned ones."""


def mirror_url(url: str, mirror: str) -> str:
    """Replace scheme and host of an http(s) url by ``mirror`` (which may carry a path prefix)."""
    parts = urlsplit(url)
    if not mirror or parts.scheme not in ("http", "https"):
        return url
    return mirror.rstrip("/") + urlunsplit(("", "", parts.path, parts.query, ""))


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    md5: str | None = None,
    mirror: str = "",
    timeout_s: float = 60.0,
    retries: int = 3,
    *,
    session: requests.Session | None = None,
    backoff_s: float = 1.0,
) -> Path:
    """Fetch ``url`` (http(s), file:// or a local file/folder) to ``dest``, verified; return ``dest``.

    A ``dest`` already there and matching the checksum is kept without any request. A local folder as
    source means the file named like ``dest`` inside it (archives fetched by hand onto a cluster).
    """
    dest = Path(dest)
    if dest.exists() and _still_good(dest, sha256, md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = mirror_url(url, mirror)
    if urlsplit(source).scheme in ("http", "https"):
        # the caller's session stays open (it may carry a login); a session of our own is closed
        with nullcontext(session) if session else requests.Session() as http:
            _http_fetch(source, part, timeout_s, retries, http, backoff_s, pinned=bool(sha256 or md5))
    else:
        shutil.copyfile(_local_source(source, dest.name), part)
    try:
        _verify(part, str(dest), sha256, md5)
    except ChecksumError:
        discard(part)
        raise
    os.replace(part, dest)
    discard(part)  # its record
    return dest


def _still_good(dest: Path, sha256: str | None, md5: str | None) -> bool:
    if sha256 is None and md5 is None:
        log.info("%s: present and nothing to verify it against; kept", dest)
        return True
    try:
        _verify(dest, str(dest), sha256, md5)
    except ChecksumError as err:
        log.warning("%s; fetching it again", err)
        dest.unlink()
        return False
    return True


def _verify(path: Path, name: str, sha256: str | None, md5: str | None) -> None:
    expected = {algo: value.lower() for algo, value in (("sha256", sha256), ("md5", md5)) if value}
    actual = file_hashes(path, list(expected) or ["sha256"])
    if not expected:
        log.warning("%s: no checksum configured; pin it with sha256: %s", name, actual["sha256"])
    for algo, value in expected.items():
        if actual[algo] != value:
            raise ChecksumError(f"{name}: {algo} mismatch: expected {value}, got {actual[algo]}")


def file_hashes(path: Path, algos: list[str]) -> dict[str, str]:
    """Hex digests of one file for several algorithms, read once."""
    hashers = {algo: hashlib.new(algo) for algo in algos}
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def _local_source(source: str, name: str) -> Path:
    parts = urlsplit(source)
    if parts.scheme not in ("", "file"):
        raise DownloadError(f"{name}: unsupported URL scheme {parts.scheme!r} in {redact(source)}")
    path = Path(url2pathname(parts.path)) if parts.scheme == "file" else Path(source)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise DownloadError(f"{name}: source {path} does not exist")
    return path


def _http_fetch(
    url: str, part: Path, timeout_s: float, retries: int, http: requests.Session, backoff_s: float, pinned: bool
) -> None:
    for attempt in range(retries + 1):
        try:
            _http_attempt(url, part, timeout_s, http, pinned)
            return
        except RETRYABLE as err:
            if attempt == retries:
                resumable = part.exists() and (pinned or load_record(part) is not None)
                kept = f"; the next run resumes from the {part.stat().st_size} bytes in {part}" if resumable else ""
                failed = f"{str(part).removesuffix('.part')}: {redact(url)} failed after {attempt + 1} attempt(s)"
                raise DownloadError(f"{failed}: {err}{kept}") from err
            wait = backoff_s * 2**attempt
            log.warning("%s: %s; retrying in %.1f s", part.name, err, wait)
            time.sleep(wait)


def _resume_offset(part: Path, pinned: bool) -> int:
    """Where to resume the part: its size, or 0 (discarded) for an unpinned part with nothing recorded
    to tell whether the server still has the same file."""
    offset = part.stat().st_size if part.exists() else 0
    if offset and not pinned and load_record(part) is None:
        log.info("%s: no validators recorded for this partial file; downloading from the start", part.name)
        discard(part)
        return 0
    return offset


def _http_attempt(url: str, part: Path, timeout_s: float, http: requests.Session, pinned: bool) -> None:
    offset = _resume_offset(part, pinned)
    record = load_record(part) if offset else None
    # identity: byte counts and Range offsets must refer to the file itself, not a gzip transfer encoding
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers.update({"Range": f"bytes={offset}-", **(record.if_range() if record else {})})
    with http.get(url, headers=headers, stream=True, timeout=timeout_s) as resp:
        resume = _check_status(resp, url, part, offset)
        # A pinned part may resume on any bytes (its checksum decides); an unpinned one only on its own.
        same = resume is False or pinned or (record is not None and record.same_file(url, resp, total_length(resp)))
        if same and resume is not None:
            if not resume:
                start_record(part, url, resp)
            _receive(resp, part, offset if resume else 0)
        if same:
            return
    log.info("%s: the file on the server changed since this part was started; downloading it again", part.name)
    discard(part)
    _http_attempt(url, part, timeout_s, http, pinned)  # without a part: a plain GET


def _receive(resp: requests.Response, part: Path, start: int) -> None:
    """Stream the body into the part, appended at start (> 0) or from the beginning."""
    length = int(resp.headers.get("Content-Length", 0)) or None
    total = start + length if length is not None else None
    name = part.name.removesuffix(".part")
    with part.open("ab" if start else "wb") as fh, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None
    ) as bar:
        for chunk in resp.iter_content(NET_CHUNK):
            fh.write(chunk)
            bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise requests.ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def _check_status(resp: requests.Response, url: str, part: Path, offset: int) -> bool | None:
    """True: append to the part; False: write it from the start; None: the part is already complete."""
    code = resp.status_code
    if code == 416 and resp.headers.get("Content-Range", "").endswith(f"/{offset}"):
        return None  # interrupted after the last byte: nothing left to fetch
    if code == 416 or (code == 206 and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-")):
        discard(part)
        raise requests.ConnectionError(f"server refused to resume at byte {offset}; starting over")
    if code >= 500:
        raise requests.ConnectionError(f"HTTP {code} from the server")
    if code >= 400:
        raise DownloadError(f"{str(part).removesuffix('.part')}: HTTP {code} for {redact(url)}")
    if offset and code == 200:
        log.info("%s: the server ignored the Range request; downloading from the start", part.name)
    return code == 206
