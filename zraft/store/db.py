"""The SQLite side of a node: one writer that applies log entries, pooled read connections.

See DESIGN.md in this package for the transaction scheme, crash/replay argument and the
durability setting.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

import apsw

from zraft.store import meta, snapshot
from zraft.store.apply import Applier, ApplyResult
from zraft.store.command import Command, Statement, decode_command
from zraft.store.execute import execute_to_result
from zraft.store.guard import Guard
from zraft.store.meta import META_TABLE, MetaState
from zraft.store.reads import Reader, open_reader
from zraft.store.reads import is_read_only as _is_read_only
from zraft.store.results import Result, render

_BUSY_TIMEOUT_MS = 5_000
_WRITER_PRAGMAS = (
    # Identical on every node; none of these can be changed by user statements (see guard.py).
    "PRAGMA synchronous=NORMAL",  # safe only because the Raft log is the durable record
    "PRAGMA foreign_keys=OFF",
    "PRAGMA recursive_triggers=OFF",
    "PRAGMA reverse_unordered_selects=OFF",
)


class StoreError(Exception):
    """The store cannot do what was asked: a malformed batch, or a file it cannot use."""


class Database:
    """A node's SQLite database: replicated writes via apply_entries, local reads via query.

    Thread-safe: writes (apply, restore) are serialised on one lock; each read borrows its
    own connection from a small pool.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_idle_readers: int = 4) -> None:
        self._path = os.fspath(path)
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[Reader] = []
        self._closed = False
        self._max_idle = max_idle_readers
        self._guard = Guard()
        self._writer = self._open_writer()
        self._applier = Applier(self._writer, self._guard)
        self._state = self._read_state()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    def close(self) -> None:
        """Close every connection. Uncommitted work does not exist between calls."""
        with self._write_lock, self._pool_lock:
            self._closed = True
            for reader in self._idle:
                reader.conn.close()
            self._idle.clear()
            self._writer.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _open_writer(self) -> apsw.Connection:
        conn = apsw.Connection(self._path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
        mode = conn.execute("PRAGMA journal_mode=WAL").get
        if mode != "wal":
            raise StoreError(f"{self._path}: cannot use WAL journal mode (got {mode!r})")
        for pragma in _WRITER_PRAGMAS:
            conn.execute(pragma)
        conn.execute(f"BEGIN IMMEDIATE; {meta.DDL}; {meta.seed_sql()}; COMMIT")
        conn.authorizer = self._guard
        return conn

    def _read_state(self) -> MetaState:
        state = meta.read(self._writer)
        if state is None:
            raise StoreError(f"{self._path}: {META_TABLE} is not in zraft's format")
        return state

    # -- replicated writes ---------------------------------------------------------------

    def applied_index(self) -> int:
        """Index of the last log entry whose effects are committed in this database."""
        return self._state.applied_index

    def apply_entries(self, batch: Sequence[tuple[int, bytes | None]]) -> list[ApplyResult]:
        """Apply committed log entries ``(index, encoded command or None)`` in one transaction.

        Indexes must be consecutive. Entries at or below the applied index are skipped (a
        replay after restart), the rest must continue it without a gap. ``None`` entries
        (no-ops, configuration changes) only advance the index. SQL errors are results;
        an exception (undecodable entry, disk error) means nothing in the batch was applied
        and the caller must not go on to later entries.
        """
        with self._write_lock:
            plan = self._plan(batch)
            fresh = [(index, cmd) for index, cmd, skipped in plan if not skipped]
            applied: list[ApplyResult] = []
            if fresh:
                applied, self._state = self._applier.apply(fresh, self._state)
            results = iter(applied)
            return [ApplyResult(index, [], skipped=True) if skipped else next(results) for index, _, skipped in plan]

    def _plan(self, batch: Sequence[tuple[int, bytes | None]]) -> list[tuple[int, Command | None, bool]]:
        """Validate the batch's indexes and decode the new entries before touching SQLite."""
        plan: list[tuple[int, Command | None, bool]] = []
        expected = self._state.applied_index + 1
        for pos, (index, data) in enumerate(batch):
            if pos and index != batch[pos - 1][0] + 1:
                raise StoreError(f"batch indexes must be consecutive: {batch[pos - 1][0]} then {index}")
            if index < expected:
                plan.append((index, None, True))
                continue
            if index != expected:
                raise StoreError(f"entry {index} would leave a gap after applied index {expected - 1}")
            plan.append((index, None if data is None else decode_command(data), False))
            expected += 1
        return plan

    # -- local reads ---------------------------------------------------------------------

    @contextmanager
    def read_connection(self) -> Iterator[apsw.Connection]:
        """Borrow a read-only connection (guarded like the writer); returned to the pool after."""
        with self._reader() as reader:
            yield reader.conn

    def query(
        self, statements: Sequence[Statement], *, associative: bool = False, blob_array: bool = False
    ) -> list[Result]:
        """Run read statements on a read connection; results in rqlite's query shapes.

        All statements of one call see the same snapshot. A statement that would write is
        not run: its result is rqlite's "attempt to change database via query operation".
        """
        return self.query_with_index(statements, associative=associative, blob_array=blob_array)[1]

    def query_with_index(
        self, statements: Sequence[Statement], *, associative: bool = False, blob_array: bool = False,
        timeout_s: float | None = None, qualify_columns: bool = False,
    ) -> tuple[int, list[Result]]:
        """Like query(), plus the applied index of the snapshot the results were read from.

        ``timeout_s`` is rqlite's ``db_timeout``: a statement still running after that long
        (counted per statement) is interrupted and gets the error "query timeout".
        """
        with self._reader() as reader, self._read_transaction(reader):
            index = snapshot.applied_index_of(reader.conn)
            raw = [self._timed(reader, s, timeout_s, qualify_columns) for s in statements if s.sql]
        return index, [render(r, associative=associative, blob_array=blob_array, query=True) for r in raw]

    @staticmethod
    def _timed(reader: Reader, stmt: Statement, timeout_s: float | None, qualify: bool) -> Result:
        if not timeout_s:
            return execute_to_result(reader.conn, reader.guard, stmt, read_only=True, qualify=qualify)
        deadline = time.monotonic() + timeout_s
        reader.conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
        try:
            return execute_to_result(reader.conn, reader.guard, stmt, read_only=True, qualify=qualify)
        finally:
            reader.conn.set_progress_handler(None)

    def is_read_only(self, sql: str) -> bool:
        """SQLite's own verdict on every statement in ``sql`` (zraft.store.reads.is_read_only:
        EXPLAIN is a read, a statement that does not compile is a write), on a pooled reader."""
        with self._reader() as reader:
            return _is_read_only(reader.conn, sql)

    @contextmanager
    def _reader(self) -> Iterator[Reader]:
        with self._pool_lock:
            reader = self._idle.pop() if self._idle else None
        reader = reader or open_reader(self._path)
        try:
            yield reader
        finally:
            self._release(reader)

    def _release(self, reader: Reader) -> None:
        with self._pool_lock:
            if not self._closed and len(self._idle) < self._max_idle and reader.conn.get_autocommit():
                self._idle.append(reader)
                return
        reader.conn.close()

    @contextmanager
    def _read_transaction(self, reader: Reader) -> Iterator[None]:
        _internal(reader, "BEGIN")
        # Start the read transaction now and load the schema it sees, so that user statements
        # are compiled (and report declared types) against it, not a stale cached schema.
        _internal(reader, "SELECT count(*) FROM sqlite_schema")
        try:
            yield
        finally:
            if not reader.conn.get_autocommit():
                _internal(reader, "COMMIT")

    # -- snapshots -----------------------------------------------------------------------

    def snapshot_to(self, path: str | os.PathLike[str]) -> int:
        """Write a consistent, durable copy of the database to ``path``; returns its applied index.

        Runs on a read connection, so applying continues meanwhile.
        """
        with self._reader() as reader:
            return snapshot.write_snapshot(reader.conn, os.fspath(path))

    def restore_from(self, path: str | os.PathLike[str], *, applied_index: int | None = None) -> int:
        """Replace the whole database with the file at ``path``, in one step for readers.

        The applied index comes from the file (a snapshot written by snapshot_to) unless
        ``applied_index`` is given (e.g. a user database loaded through the log at that
        index). Returns the new applied index.
        """
        source_path = os.fspath(path)
        with self._write_lock:
            page_size = snapshot.page_of(self._writer)
            source = apsw.Connection(source_path, flags=apsw.SQLITE_OPEN_READONLY)
            try:
                direct = applied_index is None and not snapshot.needs_preparation(source, page_size)
            finally:
                source.close()
            if direct:
                self._restore_pages(source_path)
            else:
                self._restore_prepared(source_path, page_size, applied_index)
            self._applier.reload()
            self._state = self._read_state()
            return self._state.applied_index

    def _restore_prepared(self, source_path: str, page_size: int, applied_index: int | None) -> None:
        work = f"{self._path}.restore"
        try:
            snapshot.prepare_restore(source_path, work, page_size, applied_index)
            self._restore_pages(work)
        finally:
            snapshot.remove(work)

    def _restore_pages(self, source_path: str) -> None:
        source = apsw.Connection(source_path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            snapshot.copy_pages(self._writer, source)
        finally:
            source.close()


def _internal(reader: Reader, sql: str) -> None:
    with reader.guard.trusted():
        reader.conn.execute(sql, can_cache=False)


__all__ = ["META_TABLE", "ApplyResult", "Database", "StoreError"]
