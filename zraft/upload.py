"""Streaming a file to a node's /db/load or /boot: `zraft restore` and the shell's `.restore`
and `.boot`.

The file is sent from disk chunk by chunk with its Content-Length (it may be far larger than
memory), with a progress bar; the node answers once the whole load has applied, which for a
large file takes a while after the last byte, so the wait for the answer grows with the size.
A redirect (a follower's 301 with `?redirect`, or 307/308) is followed by sending the file
again to the new address. Only the standard library's HTTP client is used.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import orjson

from zraft.api.backup import SQLITE_MAGIC, is_sqlite_file
from zraft.download import CHUNK_BYTES, MAX_REDIRECTS, Progress, _connection, _reason

APPLY_BYTES_PER_S = 1 << 20
"""A pessimistic rate at which a cluster takes a load (measured: 15-20 MiB/s on 2 cores), for
how long to wait for its answer: the node answers only once the whole load has applied."""


class UploadError(Exception):
    """The file could not be sent, or the node refused it (`status`: the HTTP status, if any)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Uploaded:
    size: int
    seconds: float
    url: str
    sqlite: bool
    """Whether the file was a SQLite database (else SQL text)."""


def is_sqlite(path: Path) -> bool:
    """The node's own test (rqlite's): the file's first bytes."""
    with open(path, "rb") as f:
        return is_sqlite_file(f.read(len(SQLITE_MAGIC)))


def upload(base_url: str, endpoint: str, path: Path, timeout: float, progress: Progress | None = None) -> Uploaded:
    """Send `path` to `endpoint` ("/db/load" or "/boot") of the node at `base_url`; UploadError
    unless the node answered 200 with no error in its results."""
    size = path.stat().st_size
    sqlite = is_sqlite(path)
    url = f"{base_url.rstrip('/')}{endpoint}"
    start = time.monotonic()
    wait = timeout + size / APPLY_BYTES_PER_S
    for _ in range(MAX_REDIRECTS + 1):
        conn = _connection(url, wait)
        try:
            status, location, body = _post(conn, url, path, size, sqlite, progress)
        except (OSError, http.client.HTTPException) as exc:
            raise UploadError(f"cannot send {path} to {url}: {_reason(exc)}") from None
        finally:
            conn.close()
        if status in (301, 302, 307, 308) and location:
            url = urllib.parse.urljoin(url, location)
            continue
        _check(status, body)
        return Uploaded(size, time.monotonic() - start, url, sqlite)
    raise UploadError("too many redirects")


def _post(conn: http.client.HTTPConnection, url: str, path: Path, size: int, sqlite: bool,
          progress: Progress | None) -> tuple[int, str | None, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn.putrequest("POST", parts.path + (f"?{parts.query}" if parts.query else ""))
    conn.putheader("Content-Type", "application/octet-stream" if sqlite else "text/plain")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    if progress is not None:
        progress.start(size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            conn.send(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    response = conn.getresponse()
    return response.status, response.getheader("Location"), response.read(1 << 20)


def _check(status: int, body: bytes) -> None:
    """UploadError for a refusal: a status other than 200, or an error in the results."""
    if status != 200:
        text = body.decode("utf-8", "replace").strip()
        raise UploadError(f"server responded with {status}" + (f": {text}" if text else ""), status)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # /boot answers 200 with an empty body
    if isinstance(doc, dict):
        errors = [r["error"] for r in doc.get("results", []) if isinstance(r, dict) and r.get("error")]
        if doc.get("error"):
            errors.insert(0, doc["error"])
        if errors:
            raise UploadError("; ".join(str(e) for e in errors), status)


__all__ = ["UploadError", "Uploaded", "is_sqlite", "upload"]
