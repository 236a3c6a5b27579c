"""Streaming a backup from a node's /db/backup into a file: `zraft backup` and the shell's
`.backup` and `.dump FILE`.

The body goes to disk chunk by chunk as it arrives (a backup may be far larger than memory),
into `FILE.part`, renamed to FILE only once the whole body is in: FILE is never a truncated
backup, and a failed download leaves no `.part` behind. A body is complete when its
Content-Length was met or its chunked encoding ended properly; a node that fails mid-stream
aborts the connection precisely so that this check fails. Redirects (a follower's 301 to the
leader, with `?redirect`) are followed. Only the standard library's HTTP client is used.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Protocol

from tqdm import tqdm

CHUNK_BYTES = 1 << 20
MAX_REDIRECTS = 5
FORMATS = ("binary", "sql", "delete")


class DownloadError(Exception):
    """The backup could not be fetched or written; `status` is the HTTP status, if any."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Progress(Protocol):
    """What a download reports as it goes."""

    def start(self, total: int | None) -> None:
        """The body begins; `total` is its size when the node sent one."""

    def advance(self, count: int) -> None:
        """`count` more bytes were written."""


@dataclass(frozen=True, slots=True)
class BackupRequest:
    """rqlite's /db/backup parameters."""

    fmt: str = "binary"
    compress: bool = False
    vacuum: bool = False
    tables: tuple[str, ...] = ()
    noleader: bool = False

    def check(self) -> None:
        """ValueError for what the node would refuse or silently ignore."""
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown format {self.fmt!r}: use {', '.join(FORMATS)}")
        if self.vacuum and self.fmt == "sql":
            raise ValueError("vacuum is for the binary formats, not the SQL dump")
        if self.tables and self.fmt != "sql":
            raise ValueError("tables are for the SQL dump only (--fmt sql)")

    def query(self) -> str:
        params = [("fmt", self.fmt)]
        params += [(name, "") for name in ("compress", "vacuum", "noleader") if getattr(self, name)]
        if self.tables:
            params.append(("tables", ",".join(self.tables)))
        return urllib.parse.urlencode(params)


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: Path
    size: int
    seconds: float
    url: str


def download(base_url: str, request: BackupRequest, dest: Path, timeout: float,
             progress: Progress | None = None) -> Downloaded:
    """Fetch the backup `request` asks for from the node at `base_url` into `dest`."""
    start = time.monotonic()
    conn, response, url = _open(f"{base_url.rstrip('/')}/db/backup?{request.query()}", timeout)
    try:
        size = _save(response, dest.with_name(dest.name + ".part"), progress)
    finally:
        conn.close()
    os.replace(dest.with_name(dest.name + ".part"), dest)
    return Downloaded(dest, size, time.monotonic() - start, url)


def _open(url: str, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """The connection and 200 response of GET `url`, redirects followed; DownloadError for
    anything else (with the node's one-line message)."""
    for _ in range(MAX_REDIRECTS + 1):
        conn = _connection(url, timeout)
        try:
            parts = urllib.parse.urlsplit(url)
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                conn.close()
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status != 200:
                text = response.read(4096).decode("utf-8", "replace").strip()
                conn.close()
                raise DownloadError(f"server responded with {response.status} {response.reason}"
                                    + (f": {text}" if text else ""), response.status)
            return conn, response, url
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise DownloadError(f"cannot fetch {url}: {_reason(exc)}") from None
    raise DownloadError("too many redirects")


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"not an http(s) URL: {url}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, parts.port, timeout=timeout)


def _save(response: http.client.HTTPResponse, part: Path, progress: Progress | None) -> int:
    """The body into `part`, checked complete; `part` is removed on any failure."""
    total = response.getheader("Content-Length")
    expected = int(total) if total and total.isdigit() else None
    if progress is not None:
        progress.start(expected)
    size = 0
    try:
        with open(part, "wb") as out:
            for chunk in _chunks(response):
                out.write(chunk)
                size += len(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
        if expected is not None and size != expected:
            raise DownloadError(f"the backup was cut short: {size} of {expected} bytes")
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot write {part}: {_reason(exc)}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return size


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body as it arrives; a body that ends early (the node aborts the connection when a
    backup fails after its headers went out) is a DownloadError."""
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"the backup was cut short after {received} bytes: {_reason(exc)}") from None
        if not chunk:
            return
        received += len(chunk)
        yield chunk


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc) or type(exc).__name__


class ProgressBar:
    """A tqdm bar on stderr (bytes, with the rate, and the time left when the size is known)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self._bar: tqdm[NoReturn] | None = None

    def start(self, total: int | None) -> None:
        self._bar = tqdm(total=total, desc=self.label, unit="B", unit_scale=True, unit_divisor=1024,
                         disable=not self.enabled, leave=False)

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
