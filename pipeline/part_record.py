"""What a partial download was started from, so that a ``.part`` is only ever resumed on the same bytes.

A file without a pinned checksum cannot be verified once it is complete, so its ``.part`` is resumed
only when the server still describes the same file: the validators of the response that started the
part (strong ETag or Last-Modified, and the total length) are kept in ``<part>.json`` and must match
the resumed response. The ETag also goes out as ``If-Range``: a server whose file changed then
answers 200 with the whole new file (RFC 9110, 13.1.5) instead of splicing its tail onto old bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from pipeline.files import write_json_atomic


@dataclass(frozen=True)
class PartRecord:
    source: str  # sha256 of the URL: the part belongs to this source (URLs may carry credentials)
    length: int
    etag: str | None
    last_modified: str | None

    def if_range(self) -> dict[str, str]:
        """The If-Range header, for a strong ETag only (a weak one cannot guard a byte range)."""
        return {"If-Range": self.etag} if self.etag and not self.etag.startswith("W/") else {}

    def same_file(self, url: str, resp: requests.Response, total: int | None) -> bool:
        """Whether resp (a 206 or 416 for this part) describes the bytes the part was started from."""
        if self.source != _digest(url) or total != self.length:
            return False
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        if self.if_range() and etag:
            return etag == self.etag
        return bool(self.last_modified) and modified == self.last_modified


def _digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def start_record(part: Path, url: str, resp: requests.Response) -> None:
    """Record the validators of the 200 response a part starts from (none usable: no record)."""
    length = int(resp.headers.get("Content-Length", 0)) or None
    record = PartRecord(_digest(url), length or 0, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
    if length and (record.if_range() or record.last_modified):
        write_json_atomic(asdict(record), sidecar(part))
    else:
        sidecar(part).unlink(missing_ok=True)


def load_record(part: Path) -> PartRecord | None:
    """The record of an existing part; None when there is none or it cannot be read."""
    try:
        return PartRecord(**json.loads(sidecar(part).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def discard(part: Path) -> None:
    """Remove a part and its record."""
    part.unlink(missing_ok=True)
    sidecar(part).unlink(missing_ok=True)


def total_length(resp: requests.Response) -> int | None:
    """The file's whole length from a 206's or 416's Content-Range ("bytes a-b/N", "bytes */N")."""
    total = resp.headers.get("Content-Range", "").rpartition("/")[2]
    return int(total) if total.isdigit() else None
