"""The asynchronous half of /db/backup: admission, a scratch copy made in a worker thread,
then the copy streamed to the client in chunks (gzip-compressed on the way when asked).

Why a scratch copy rather than streaming the live file: the database keeps changing under
the store, and the client may read slowly; a copy taken under one read transaction
(zraft.api.backup_files) is one point in time, and the read transaction lasts only as long
as the disk-to-disk copy, never as long as a slow download (a long reader keeps the store's
WAL from being reset). The copy is also where zraft's own table is dropped and rollback-
journal mode set, so that the file is plain SQLite.

Bounds, so that a backup cannot hurt the node:
- memory: nothing holds more than one chunk (CHUNK_BYTES) per backup: the worker reads and
  compresses a chunk, the event loop writes it and waits for the socket to drain before
  asking for the next (a 1 GB backup stays well under 200 MB of RSS, tests/integration);
- concurrency: at most api.max_concurrent_backups at once (503 beyond), each on a thread of
  this module's own pool, so that long copies never take the default executor's threads
  from /db/request and /db/load;
- a client that stops reading: each chunk must be taken within api.idle_timeout_ms, else the
  connection is aborted;
- disk: the copy goes beside the database (`<data_dir>/tmp`), after a check that it fits
  with room to spare; a full disk is a 503. Scratch files are removed whatever happens
  (the streamed one as soon as it is open, the others once the worker using them is done),
  and at api start.

After the headers have gone out a failure can no longer change the status, so the
connection is aborted instead: a truncated chunked body (or a short one against its
Content-Length) tells the client the backup is incomplete, where a clean end would not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import apsw
from aiohttp import web

from zraft.api import backup_files
from zraft.api.backup_files import Cancelled, NoSpace
from zraft.api.errors import BadRequest, Busy, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_BYTES = 1 << 20
GZIP_LEVEL = 1
"""rqlite compresses with gzip.BestSpeed: a backup is usually CPU-bound, not network-bound."""
GZIP_WBITS = 31
"""zlib's way of asking for a gzip header and trailer rather than a raw zlib stream."""
FORMATS = ("binary", "sql", "delete")


@dataclass(frozen=True, slots=True)
class BackupSpec:
    """What one /db/backup request asks for."""

    fmt: str = "binary"
    compress: bool = False
    vacuum: bool = False
    tables: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> BackupSpec:
        """rqlite's parameters: `fmt` (case-insensitive, anything unknown is binary), the flags
        `compress` and `vacuum`, and `tables=a,b` (trimmed, empty names dropped), which only
        the SQL dump uses. `vacuum` with the SQL dump is a 400."""
        fmt = (query.get("fmt") or "binary").lower()
        fmt = fmt if fmt in FORMATS else "binary"
        vacuum = "vacuum" in query
        if vacuum and fmt == "sql":
            raise BadRequest("vacuum is not supported with the SQL format")
        names = tuple(n.strip() for n in (query.get("tables") or "").split(","))
        return cls(fmt=fmt, compress="compress" in query, vacuum=vacuum,
                   tables=tuple(n for n in names if n) if fmt == "sql" else ())

    @property
    def content_type(self) -> str:
        """rqlite's, compressed or not (it sets no Content-Encoding: the gzip is the payload)."""
        return "application/sql" if self.fmt == "sql" else "application/octet-stream"


class Backups:
    """Every backup of this api process: the cap, the worker pool, the counters."""

    def __init__(self, db_path: str, scratch: Path, limit: int, write_timeout_s: float) -> None:
        self.db_path = db_path
        self.scratch = scratch
        self.limit = limit
        self.write_timeout_s = write_timeout_s
        self.active = 0
        self.counts = {"done": 0, "refused": 0, "failed": 0, "cancelled": 0}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="zraft-backup")
        self._jobs: set[_Job] = set()

    def stats(self) -> dict[str, int]:
        return {"active": self.active, "max": self.limit, **self.counts}

    def clean(self) -> int:
        """Remove what a previous run of the process left in the scratch folder."""
        return backup_files.clean_scratch(self.scratch)

    def close(self) -> None:
        """Stop every worker at its next step (the process is stopping)."""
        for job in list(self._jobs):
            job.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def serve(self, request: web.BaseRequest, spec: BackupSpec, headers: Mapping[str, str]) -> web.StreamResponse:
        """Make the copy, then stream it; Busy when `limit` backups are running already,
        Unavailable when the copy cannot be made (no database yet, a full disk)."""
        if self.active >= self.limit:
            self.counts["refused"] += 1
            raise Busy(f"too many backups in progress: at most {self.limit} at once "
                       "(api.max_concurrent_backups); try again later")
        self.active += 1
        job = _Job(self)
        self._jobs.add(job)
        try:
            reader = await self._prepare(job, spec)
            return await self._stream(request, job, reader, spec, headers)
        except asyncio.CancelledError:
            self.counts["cancelled"] += 1
            raise
        finally:
            self.active -= 1
            self._jobs.discard(job)
            job.close()

    async def _prepare(self, job: _Job, spec: BackupSpec) -> _ChunkReader:
        """The scratch file, made and opened; until it is, a failure can still be a 503."""
        try:
            path = await job.prepare(self.db_path, spec)
            return await job.run(job.open, path, spec.compress)
        except (NoSpace, apsw.Error, OSError) as exc:  # a full disk, no database yet, the store's lock
            self.counts["failed"] += 1
            raise Unavailable(f"backup failed: {exc}") from None
        except Cancelled:
            self.counts["cancelled"] += 1
            raise Unavailable("backup failed: the api process is stopping") from None

    async def _stream(self, request: web.BaseRequest, job: _Job, reader: _ChunkReader, spec: BackupSpec,
                      headers: Mapping[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={**headers, "Content-Type": spec.content_type})
        if not spec.compress:
            response.content_length = reader.size
        try:
            await response.prepare(request)
            while chunk := await job.run(reader.read):
                async with asyncio.timeout(self.write_timeout_s):
                    await response.write(chunk)
            await response.write_eof()
            self.counts["done"] += 1
        except ConnectionError:  # the client went away
            self.counts["cancelled"] += 1
        except TimeoutError:
            self.counts["failed"] += 1
            log.warning("backup aborted: the client took no data for %.0f s", self.write_timeout_s)
            _abort(request)
        except Exception:  # noqa: BLE001 - headers are out: the only honest signal left is an abort
            self.counts["failed"] += 1
            log.exception("backup aborted mid-stream")
            _abort(request)
        return response

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """`fn(*args)` on the backups' own worker pool."""
        return self._pool.submit(fn, *args)


class _Job:
    """One backup's worker calls and scratch files. A worker call cannot be interrupted, so
    when the request ends early the files are released only once the call in progress has
    returned (it is told to stop through `cancel`)."""

    def __init__(self, backups: Backups) -> None:
        self.backups = backups
        self.cancel = threading.Event()
        self._files: list[Path] = []
        self._closers: list[Callable[[], None]] = []
        self._pending: concurrent.futures.Future[Any] | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the backup pool, one call at a time."""
        future = self.backups.submit(fn, *args)
        self._pending = future
        return await asyncio.wrap_future(future)

    async def prepare(self, db_path: str, spec: BackupSpec) -> Path:
        """The file to stream: a SQL dump, a copy, or a vacuumed copy."""
        folder = self.backups.scratch
        needed = backup_files.database_bytes(db_path) * (2 if spec.vacuum else 1)
        await self.run(backup_files.check_space, folder, needed)
        if spec.fmt == "sql":
            dump = self._scratch(".sql")
            await self.run(backup_files.write_dump, db_path, dump, spec.tables, self.cancel)
            return dump
        copy = self._scratch(".sqlite")
        await self.run(backup_files.copy_database, db_path, copy, self.cancel)
        if not spec.vacuum:
            return copy
        vacuumed = self._scratch(".sqlite")
        await self.run(backup_files.vacuum_copy, copy, vacuumed, self.cancel)
        await self.run(self._forget, copy)
        return vacuumed

    def open(self, path: Path, compress: bool) -> _ChunkReader:
        """(worker) The reader of `path`. Once it is open the name is removed: the data stays
        until the reader is closed, and nothing is left behind should the process die."""
        reader = _ChunkReader(path, compress)
        self._closers.append(reader.close)
        self._forget(path)
        return reader

    def _forget(self, path: Path) -> None:
        """(worker) Remove a scratch file that no worker uses any more."""
        backup_files.remove_scratch(path)
        if path in self._files:
            self._files.remove(path)

    def close(self) -> None:
        """Stop the worker and release everything, now or when its call returns."""
        self.cancel.set()
        pending = self._pending
        if pending is None or pending.done():
            self._release()
        else:
            pending.add_done_callback(lambda _: self._release())

    def _scratch(self, suffix: str) -> Path:
        path = backup_files.new_scratch(self.backups.scratch, suffix)
        self._files.append(path)
        return path

    def _release(self) -> None:
        for closer in self._closers:
            closer()
        for path in self._files:
            backup_files.remove_scratch(path)
        self._closers.clear()
        self._files.clear()


class _ChunkReader:
    """The scratch file in CHUNK_BYTES pieces, through a streaming gzip compressor when asked.
    Opened, read and compressed in a worker thread."""

    def __init__(self, path: Path, compress: bool) -> None:
        self._file = open(path, "rb", buffering=0)
        self.size = os.fstat(self._file.fileno()).st_size
        self._gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS) if compress else None
        self._finished = False

    def read(self) -> bytes:
        """The next piece to send; b"" once everything (the gzip trailer included) was."""
        while not self._finished:
            data = self._file.read(CHUNK_BYTES)
            if self._gzip is None:
                self._finished = not data
                return data
            if not data:
                self._finished = True
                return self._gzip.flush()
            out = self._gzip.compress(data)
            if out:
                return out
        return b""

    def close(self) -> None:
        self._file.close()


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
