"""Read-only access to a node's SQLite file, for any process on the node.

The store process reads through its `ReadPool`; the api process asks SQLite whether a
/db/request is read-only (and a later issue lets it run the same `ReadPool` on the file
itself). Both open their connections here, so that a read connection is the same everywhere:
read-only at the file level (SQLITE_OPEN_READONLY: no statement can write, whatever it is),
guarded like the writer (zraft.store.guard, so that a statement the store would refuse does
not compile here either), and with a busy timeout for the moments a WAL reader must wait
(recovery, a checkpoint restarting the WAL).

`is_read_only` is zraft's one read/write classifier: SQLite's own verdict
(`sqlite3_stmt_readonly`), statement by statement, as rqlite's `StmtReadOnlyWithConn` does:
- EXPLAIN counts as read-only (it runs nothing);
- a statement that does not compile (a syntax error, a missing table, one the guard refuses)
  counts as a write: it is then sent through the log, where it fails with its real message
  on every node alike, rather than being refused here with a message of ours.

`read_snapshot` runs one read (every statement of a request) in one read transaction and
gives rqlite's query shapes; `ReadPool` runs reads on worker threads, each with a connection
of its own, bounded in number, time and result size (DESIGN.md, "Reads").
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import apsw
import apsw.ext
import orjson

from zraft.store.command import Statement
from zraft.store.execute import FATAL_ERRORS, QUERY_WRITE_ERROR, StatementFailed, is_meta_row
from zraft.store.guard import Guard
from zraft.store.results import Result, SQLiteValue, error_result, render, rows_result
from zraft.store.snapshot import applied_index_of

log = logging.getLogger("zraft.store")

BUSY_TIMEOUT_MS = 5_000
TIMEOUT_ERROR = "query timeout"
"""rqlite's per-statement error when db_timeout (or here the store's read limit) runs out."""
TOO_LARGE_ERROR = "query result too large"
"""The start of the per-statement error of a statement whose rows would pass the result cap."""
PROGRESS_STEPS = 100_000
"""SQLite VM steps between two looks at a read's deadline: about 0.6 ms of a simple scan on
the CI kind of machine (~160 M steps/s). Each look takes the GIL, so 1,000 (what db_timeout
used before) made a running read ask for the GIL every 6 us."""
CHUNK_ROWS = 1024
CHUNK_BYTES = 1 << 20
"""Rows are rendered and encoded to JSON in chunks of at most this many rows or about this
many bytes of text and blobs, so that a read holds one chunk of Python rows at a time."""


@dataclass(slots=True)
class Reader:
    """A read-only connection and the guard that is its authorizer."""

    conn: apsw.Connection
    guard: Guard

    def close(self) -> None:
        self.conn.close()


def open_reader(path: str) -> Reader:
    """A guarded read-only connection to the database at `path` (apsw.Error if it cannot be
    opened, for instance when the file does not exist)."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        guard = Guard()
        conn.authorizer = guard
    except BaseException:
        conn.close()
        raise
    return Reader(conn, guard)


def is_read_only(conn: apsw.Connection, sql: str) -> bool:
    """SQLite's verdict on every statement in `sql`, compiled (never run) on `conn` against
    its current schema: True when none of them writes."""
    rest: str | None = sql
    while rest and rest.strip():
        try:
            info = apsw.ext.query_info(conn, rest)
        except (apsw.Error, ValueError):  # ValueError: text SQLite cannot take (a NUL byte)
            return False  # does not compile: a write, so that the log reports the error
        if not (info.is_readonly or info.is_explain):
            return False
        if info.query_remaining == rest:  # no progress: never loop on it
            break
        rest = info.query_remaining
    return True


def all_read_only(path: str, sqls: Iterable[str]) -> bool:
    """True when every statement of every string is read-only for SQLite (is_read_only), on
    a connection of its own to the database at `path`. A database that does not exist yet
    has no schema to compile against: everything counts as a write, and the log decides."""
    if not os.path.exists(path):
        return False
    try:
        reader = open_reader(path)
    except apsw.Error:
        return False
    try:
        return all(is_read_only(reader.conn, sql) for sql in sqls)
    finally:
        reader.close()


# == one read ==================================================================================
@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How a read is run and rendered (rqlite's query flags)."""

    associative: bool = False
    blob_array: bool = False
    qualify_columns: bool = False
    db_timeout_s: float = 0.0
    """rqlite's db_timeout: a statement still running after this long gets "query timeout"
    (0: only the read's own deadline applies)."""


class _Limits:
    """What bounds one read: a deadline for the whole read, an optional cancel flag, and what
    is left of its result budget in bytes (0: no cap)."""

    __slots__ = ("deadline", "cancelled", "cap", "left")

    def __init__(self, deadline: float, cancelled: Callable[[], bool] | None, cap: int) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.cap = cap
        self.left = cap

    def over(self, deadline: float) -> bool:
        return time.monotonic() > deadline or (self.cancelled is not None and self.cancelled())


def too_large_message(cap: int) -> str:
    return (f"{TOO_LARGE_ERROR}: more than {cap} bytes (store.max_result_bytes); "
            "select fewer rows or columns, or page with LIMIT and OFFSET")


def read_snapshot(reader: Reader, statements: Sequence[Statement], options: ReadOptions = ReadOptions(), *,
                  deadline: float = math.inf, cancelled: Callable[[], bool] | None = None,
                  max_result_bytes: int = 0, encoded: bool = False) -> tuple[int, list[Result]]:
    """Run read statements in one read transaction; the applied index of that snapshot and
    one result per non-empty statement, in rqlite's query shapes.

    Every statement sees the same snapshot, with the schema loaded at its start (declared
    types follow a table dropped and recreated). A statement that would write is not run:
    its result is rqlite's "attempt to change database via query operation". A statement
    still running at `deadline`, or after `options.db_timeout_s` of its own, or when
    `cancelled()` says so, gets "query timeout". With `max_result_bytes`, a statement whose
    rows would take the JSON of the results past that many bytes gets a "query result too
    large" error instead of its rows, found while its rows are fetched (never more than one
    chunk of rows beyond the cap is held). With `encoded`, rows travel as pre-encoded JSON
    (orjson.Fragment) inside each result: orjson.dumps gives the same JSON, without the
    rows ever existing as Python objects all at once.
    """
    limits = _Limits(deadline, cancelled, max_result_bytes)
    try:
        with read_transaction(reader):
            index = applied_index_of(reader.conn)
            results = [_statement(reader, s, options, limits, encoded) for s in statements if s.sql]
    finally:
        reader.conn.set_progress_handler(None)
    return index, results


@contextmanager
def read_transaction(reader: Reader) -> Iterator[None]:
    """One read transaction on `reader`, started at once with the schema it sees loaded, so
    that user statements are compiled (and report declared types) against it, not against a
    stale cached schema."""
    _internal(reader, "BEGIN")
    _internal(reader, "SELECT count(*) FROM sqlite_schema")
    try:
        yield
    finally:
        if not reader.conn.get_autocommit():
            _internal(reader, "COMMIT")


def _internal(reader: Reader, sql: str) -> None:
    with reader.guard.trusted():
        reader.conn.execute(sql, can_cache=False)


def _statement(reader: Reader, stmt: Statement, options: ReadOptions, limits: _Limits, encoded: bool) -> Result:
    deadline = limits.deadline
    if options.db_timeout_s > 0:
        deadline = min(deadline, time.monotonic() + options.db_timeout_s)
    rows = _Rows(options, limits, deadline, encoded)
    if math.isfinite(deadline) or limits.cancelled is not None:
        reader.conn.set_progress_handler(lambda: limits.over(deadline), PROGRESS_STEPS)
    else:
        reader.conn.set_progress_handler(None)
    try:
        if limits.over(deadline):
            raise StatementFailed(TIMEOUT_ERROR)
        _fetch(reader, stmt, rows)
        result = rows.result()
    except StatementFailed as failed:
        result = render(error_result(failed.message), associative=options.associative, query=True)
    if limits.cap:
        limits.left -= rows.size if "error" not in result else len(result["error"]) + 16
    return result


def _fetch(reader: Reader, stmt: Statement, rows: _Rows) -> None:
    """Run one user statement, feeding its rows to `rows`; its failure as StatementFailed
    (zraft.store.execute._run's sorting of errors, for a read)."""
    cursor = reader.conn.cursor()
    cursor.exec_trace = rows.trace
    reader.guard.schema_read = False
    try:
        for row in cursor.execute(stmt.sql, stmt.params, can_cache=False):
            if rows.first:
                # the statement may have been re-prepared on its first step (schema change)
                rows.describe(cursor)
            if reader.guard.schema_read and is_meta_row(row):
                continue  # zraft's bookkeeping table is not the user's: hide it from listings
            rows.add(row)
        rows.flush()
    except StatementFailed:
        raise
    except apsw.ExecTraceAbort as exc:
        raise StatementFailed(QUERY_WRITE_ERROR) from exc
    except apsw.AuthError as exc:
        raise StatementFailed(reader.guard.explain(exc)) from exc
    except FATAL_ERRORS:
        raise
    except apsw.InterruptError as exc:  # a time limit ran out (progress handler)
        raise StatementFailed(TIMEOUT_ERROR) from exc
    except apsw.ReadOnlyError as exc:
        raise StatementFailed(QUERY_WRITE_ERROR) from exc
    except apsw.TooBigError as exc:  # a value over SQLITE_LIMIT_LENGTH (ReadPool: the cap)
        cap = rows.limits.cap
        raise StatementFailed(f"{exc}: a value over {cap} bytes (store.max_result_bytes)" if cap else str(exc)) \
            from exc
    except apsw.Error as exc:  # a guard refusal of a function comes as SQLITE_ERROR, not SQLITE_AUTH
        raise StatementFailed(reader.guard.explain(exc)) from exc
    except KeyError as exc:
        raise StatementFailed(f"missing named parameter: {exc.args[0]}") from exc
    except UnicodeDecodeError as exc:
        raise StatementFailed(f"TEXT value is not valid UTF-8: {exc.reason}") from exc
    except (TypeError, OverflowError, ValueError) as exc:
        raise StatementFailed(f"bad parameter: {exc}") from exc
    finally:
        cursor.close(True)


class _Rows:
    """The rows of one statement as they arrive: rendered in chunks, counted against the
    read's result budget, and (when `encoded`) kept as JSON text rather than Python objects.

    It is also the statement's exec tracer: it refuses writes before they run and restarts
    the rows when a string holds several statements (the last one gives the result, as in
    go-sqlite3)."""

    def __init__(self, options: ReadOptions, limits: _Limits, deadline: float, encoded: bool) -> None:
        self.options = options
        self.limits = limits
        self.deadline = deadline
        self.encoded = encoded
        self.description: Sequence[tuple[str, str | None]] | None = None
        self.first = True
        self.size = 0
        self._pending: list[tuple[SQLiteValue, ...]] = []
        self._pending_bytes = 0
        self._head: Result | None = None
        self._items: list[Any] = []

    def trace(self, cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        if not cursor.has_vdbe:  # only whitespace or comments: not a statement
            return True
        if not (cursor.is_readonly or cursor.is_explain):
            return False  # apsw.ExecTraceAbort: a write on the query path
        self.describe(cursor)
        self.first = True
        self.size = 0
        self._pending, self._pending_bytes, self._head, self._items = [], 0, None, []
        return True

    def describe(self, cursor: apsw.Cursor) -> None:
        if not self.options.qualify_columns:
            self.description = cursor.get_description()
        else:  # rqlite's qualify_columns: table.column for columns straight from a table
            self.description = [(f"{table}.{name}" if table else name, decl)
                                for name, decl, _db, table, _origin in cursor.description_full]

    def add(self, row: tuple[SQLiteValue, ...]) -> None:
        self.first = False
        self._pending.append(row)
        if self.limits.cap:
            # A lower bound of the row's JSON (2 bytes for the smallest value and its comma),
            # so that a few huge rows are rendered (and refused) before they pile up.
            self._pending_bytes += 2 * len(row) + sum([len(v) for v in row if isinstance(v, (str, bytes))])
            if self.size + self._pending_bytes > self.limits.left:
                raise StatementFailed(self.too_large())
        if len(self._pending) >= CHUNK_ROWS or self._pending_bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        """Render the pending rows; the first chunk also fixes columns and types."""
        if not self._pending and self._head is not None:
            return
        if self.limits.over(self.deadline):
            raise StatementFailed(TIMEOUT_ERROR)
        try:
            raw = rows_result(self.description or (), self._pending)
        except ValueError as exc:  # a time rqlite cannot show: the statement's error
            raise StatementFailed(str(exc)) from exc
        rendered = render(raw, associative=self.options.associative, blob_array=self.options.blob_array,
                          query=True)
        items = rendered.pop(self._key, None) or []
        if self._head is None:
            self._head = rendered
            self.size = len(orjson.dumps(rendered)) + len(self._key) + 6 if self.limits.cap else 0
        self._pending, self._pending_bytes = [], 0
        if not items:
            return
        if self.encoded:
            body = orjson.dumps(items)[1:-1]  # "row,row,...": see result()
            self.size += len(body) + 1
            self._items.append(orjson.Fragment(body))
        else:
            if self.limits.cap:
                self.size += len(orjson.dumps(items))
            self._items.extend(items)
        if self.limits.cap and self.size > self.limits.left:
            raise StatementFailed(self.too_large())

    def result(self) -> Result:
        """The statement's result in rqlite's shape. Encoded chunks are fragments "row,row"
        without brackets: orjson writes a list of them as "[" chunk "," chunk "]", which is
        exactly the array of all rows."""
        self.flush()
        assert self._head is not None
        out = dict(self._head)
        if self._items or self.options.associative:
            out[self._key] = self._items
        return out

    def too_large(self) -> str:
        self._pending, self._items = [], []  # let the rows go now
        return too_large_message(self.limits.cap)

    @property
    def _key(self) -> str:
        return "rows" if self.options.associative else "values"


# == the pool ==================================================================================
@dataclass(slots=True)
class ReadJob:
    """One read for the pool: its statements, options, the caller's deadline for all of it,
    and `tag`, the caller's own (who to answer), handed back with the answer."""

    statements: Sequence[Statement]
    options: ReadOptions = ReadOptions()
    deadline: float = math.inf
    tag: Any = None


@dataclass(slots=True)
class ReadAnswer:
    """What a read gave: the snapshot's applied index and one result per statement (rows as
    orjson fragments: orjson.dumps them), or `failure` when the read could not run at all."""

    index: int = 0
    results: list[Result] = field(default_factory=list)
    failure: str = ""
    expired: bool = False
    """The deadline passed before a worker took the read: nothing ran."""

    def count(self, prefix: str) -> int:
        """How many statements failed with an error starting `prefix`."""
        return sum(1 for r in self.results if str(r.get("error", "")).startswith(prefix))


Done = Callable[[ReadJob, ReadAnswer], None]


class ReadPool:
    """Reads on `workers` threads, each with its own read-only connection (open_reader).

    WAL lets them read beside the writer, each from its own snapshot, and apsw releases the
    GIL while SQLite works, so a long read neither blocks applying nor holds the GIL. Bounded:
    at most `max_queued` reads wait for a worker (`submit` says False beyond: the caller
    answers busy); each read runs at most `timeout_s` (every statement then "query timeout"),
    less if its job's deadline or db_timeout says so; the JSON of a read's results is at most
    `max_result_bytes` (every value, too, through SQLITE_LIMIT_LENGTH), counted while rows are
    fetched.

    `done(job, answer)` is called on the worker's thread: the caller hands the answer to its
    own loop from there (a queue and a wake-up: the pool knows nothing of sockets or event
    loops, so that the same pool can serve another process). `close()` interrupts what runs.
    """

    def __init__(self, path: str, done: Done, *, workers: int = 4, max_queued: int = 1000,
                 timeout_s: float = 60.0, max_result_bytes: int = 32 << 20, name: str = "zraft-read") -> None:
        self._path = path
        self._done = done
        self._max_queued = max_queued
        self._timeout_s = timeout_s
        self._cap = max_result_bytes
        self._jobs: deque[ReadJob] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.running = 0
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def submit(self, job: ReadJob) -> bool:
        """Queue `job` for the next free worker; False when the queue is full or closed."""
        with self._cond:
            if self._closed or len(self._jobs) >= self._max_queued:
                return False
            self._jobs.append(job)
            self._cond.notify()
        return True

    def close(self, wait_s: float = 5.0) -> bool:
        """Stop: queued reads are dropped unanswered, running ones interrupted; waits up to
        `wait_s` for the workers to end. True when they all did (none will call `done`)."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()
        end = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _is_closed(self) -> bool:
        return self._closed

    def _work(self) -> None:
        reader: Reader | None = None
        try:
            while (job := self._next()) is not None:
                reader, answer = self._run(reader, job)
                with self._cond:
                    self.running -= 1
                try:
                    self._done(job, answer)
                except Exception:
                    log.exception("read answer could not be handed over")
        finally:
            if reader is not None:
                reader.close()

    def _next(self) -> ReadJob | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            self.running += 1
            return self._jobs.popleft()

    def _run(self, reader: Reader | None, job: ReadJob) -> tuple[Reader | None, ReadAnswer]:
        now = time.monotonic()
        if now >= job.deadline:
            return reader, ReadAnswer(expired=True)
        try:
            if reader is None:
                reader = open_reader(self._path)
                if self._cap:
                    reader.conn.limit(apsw.SQLITE_LIMIT_LENGTH, self._cap)
            index, results = read_snapshot(reader, job.statements, job.options,
                                           deadline=min(job.deadline, now + self._timeout_s),
                                           cancelled=self._is_closed, max_result_bytes=self._cap, encoded=True)
            return reader, ReadAnswer(index, results)
        except Exception as exc:  # the node's trouble (busy, I/O, a file it cannot open), or a bug
            log.warning("read failed: %s: %s", type(exc).__name__, exc)
            if reader is not None:
                reader.close()  # a fresh connection for the next read
            return None, ReadAnswer(failure=f"read failed: {exc}")
