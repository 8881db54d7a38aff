"""A local HTTP file server for download tests: Range requests, a one-time cut, a request log.

Serves the files of one folder on 127.0.0.1 at a free port, from a thread. ``cut_once(name)`` makes the
next GET of that file announce its full length, send half of it and drop the connection, the way an
interrupted transfer looks to the client. ``ignore_range`` answers 200 with the whole file to Range
requests, as some servers do. Every file answer carries the validators ``ETag`` (from the content) and
``Last-Modified`` (the file's mtime) unless ``validators`` is off, and a Range request whose ``If-Range``
no longer matches gets the whole file with 200 (HTTP's rule) unless ``honour_if_range`` is off.
POST answers ``post_status`` (a login page that refuses).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class FileServer:
    root: Path
    requests: list[Request] = field(default_factory=list)
    ignore_range: bool = False
    validators: bool = True
    honour_if_range: bool = True
    post_status: int = 200
    _cuts: set[str] = field(default_factory=set)
    _httpd: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def cut_once(self, name: str) -> None:
        self._cuts.add(name)

    def start(self) -> "FileServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: FileServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.owner.requests.append(Request("POST", self.path, dict(self.headers), body))
        self.send_response(self.owner.post_status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.owner.requests.append(Request("GET", self.path, dict(self.headers)))
        name = unquote(urlsplit(self.path).path).lstrip("/")
        path = self.owner.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        validators = {"ETag": etag, "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True)}
        if not self.owner.validators:
            validators = {}
        start = self._range_start(len(data), validators)
        if start is None:
            return
        self.send_response(206 if start else 200)
        for key, value in validators.items():
            self.send_header(key, value)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in self.owner._cuts:
            self.owner._cuts.discard(name)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def _range_start(self, size: int, validators: dict[str, str]) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        changed = if_range is not None and if_range not in validators.values() and self.owner.honour_if_range
        if not match or self.owner.ignore_range or changed:
            return 0
        start = int(match.group(1))
        if start >= size:
            self.send_response(416)
            for key, value in validators.items():
                self.send_header(key, value)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return start
