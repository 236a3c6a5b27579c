"""The SQLite side of a node: one writer that applies log entries, pooled read connections.

See DESIGN.md in this package for the transaction scheme, crash/replay argument and the
durability setting.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

import apsw

from zraft.store import meta, snapshot
from zraft.store import loading
from zraft.store.apply import Applier, ApplyResult, BadEntry, Step
from zraft.store.command import CommandError, LoadAbort, LoadCommit, Payload, Statement, UnsupportedCommandVersion, decode_command
from zraft.store.determinism import EntryClock, EntryRandom, deterministic_apply, force_utc
from zraft.store.guard import FIXED_SETTINGS, Guard
from zraft.store.meta import META_TABLE, MetaState
from zraft.store.reads import Reader, ReadOptions, open_reader, read_snapshot
from zraft.store.reads import is_read_only as _is_read_only
from zraft.store.results import Result

_BUSY_TIMEOUT_MS = 5_000
_WRITER_PRAGMAS = (
    # Identical on every node; none of these can be changed by user statements (see guard.py,
    # FIXED_SETTINGS, which a user statement may only repeat). foreign_keys is replicated:
    # the applier sets it from _zraft_meta before the first entry.
    "PRAGMA synchronous=NORMAL",  # safe only because the Raft log is the durable record
    "PRAGMA foreign_keys=OFF",
    *(f"PRAGMA {name}={value}" for name, (shown, value) in FIXED_SETTINGS.items()
      # properties of the file (page_size, auto_vacuum), SQLite's own limit, set_busy_timeout():
      if name not in ("page_size", "auto_vacuum", "max_page_count", "busy_timeout")),
)


class StoreError(Exception):
    """The store cannot do what was asked: a malformed batch, or a file it cannot use."""


class NewerCommand(StoreError):
    """Entry ``index`` was written by a newer zraft (a command version this build cannot read).

    Nothing of the batch was applied. The entries before ``index`` may be applied on their
    own; that one must wait for an upgrade (applying it as an error would make this node
    differ from upgraded ones, which apply it)."""

    def __init__(self, index: int, reason: UnsupportedCommandVersion) -> None:
        super().__init__(f"entry {index} needs a newer zraft: {reason}")
        self.index = index


class Database:
    """A node's SQLite database: replicated writes via apply_entries, local reads via query.

    Thread-safe: writes (apply, restore) are serialised on one lock; each read borrows its
    own connection from a small pool.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_idle_readers: int = 4) -> None:
        self._path = os.fspath(path)
        snapshot.remove(f"{self._path}.load")  # a bulk load's scratch file left by a crash
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[Reader] = []
        self._closed = False
        self._max_idle = max_idle_readers
        self._guard = Guard(writer=True)
        self._clock: EntryClock | None = None
        random: EntryRandom | None = None
        if deterministic_apply():  # off only under the test switch, see determinism.py
            force_utc()
            self._clock = EntryClock()
        try:
            self._writer = self._open_writer()
        except BaseException:
            if self._clock is not None:
                self._clock.unregister()
            raise
        if self._clock is not None:
            random = EntryRandom(self._writer)
        self._applier = Applier(self._writer, self._guard, clock=self._clock, random=random)
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
            if self._clock is not None:
                self._clock.unregister()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _open_writer(self) -> apsw.Connection:
        conn = apsw.Connection(self._path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
                               vfs=None if self._clock is None else self._clock.vfs_name)
        conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
        mode = conn.execute("PRAGMA journal_mode=WAL").get
        if mode != "wal":
            raise StoreError(f"{self._path}: cannot use WAL journal mode (got {mode!r})")
        for pragma in _WRITER_PRAGMAS:
            conn.execute(pragma).fetchall()
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

    def sync(self) -> int:
        """Make everything applied so far survive a power loss, and return the applied index
        that now does. With synchronous=NORMAL a commit reaches the WAL file but is fsynced only
        at checkpoints; one fsync of the WAL (and of the main file, which checkpoints have
        written) makes every committed transaction durable, whatever the database's size. The
        Raft log may then drop entries up to that index (zraft/procs/DESIGN.md, snapshots)."""
        with self._write_lock:
            if self._closed:
                raise StoreError(f"{self._path}: closed")
            index = self._state.applied_index
            for path in (f"{self._path}-wal", self._path):
                _fsync_file(path)
            return index

    def apply_entries(self, batch: Sequence[tuple[int, bytes | None]]) -> list[ApplyResult]:
        """Apply committed log entries ``(index, encoded command or None)`` in one transaction.

        Indexes must be consecutive. Entries at or below the applied index are skipped (a
        replay after restart), the rest must continue it without a gap. ``None`` entries
        (no-ops, configuration changes) only advance the index. SQL errors are results, and
        so is a payload that is not a valid command (every node answers it alike).

        An exception means that the caller must not go on to later entries. ``NewerCommand``
        (an entry from a newer zraft) and index errors are raised before anything runs; a
        disk error rolls back the transaction it hit. The batch is one transaction unless an
        entry sets ``PRAGMA foreign_keys``, which ends its transaction: if a later one then
        fails, the earlier ones stay applied (``applied_index()`` tells).
        """
        with self._write_lock:
            plan = self._plan(batch)
            fresh = [(index, cmd) for index, cmd, skipped in plan if not skipped]
            applied: list[ApplyResult] = []
            while fresh:
                cut = next((pos for pos, (_, cmd) in enumerate(fresh) if isinstance(cmd, LoadCommit)), len(fresh))
                if cut:
                    applied += self._run([(index, cmd) for index, cmd in fresh[:cut] if not isinstance(cmd, LoadCommit)])
                if cut < len(fresh):
                    index, commit = fresh[cut]
                    assert isinstance(commit, LoadCommit)
                    applied.append(self._load(index, commit))
                fresh = fresh[cut + 1:]
            results = iter(applied)
            return [ApplyResult(index, [], skipped=True) if skipped else next(results) for index, _, skipped in plan]

    def _run(self, entries: Sequence[tuple[int, Step]]) -> list[ApplyResult]:
        try:
            applied, self._state = self._applier.apply(entries, self._state)
        except BaseException:
            self._state = self._applier.committed
            raise
        return applied

    def _load(self, index: int, commit: LoadCommit) -> ApplyResult:
        """The end of a bulk load (zraft/store/loading.py): swap the staged file in at ``index``,
        or answer why not, alike on every node. This node's disk errors raise."""
        work = f"{self._path}.load"
        try:
            with self._guard.trusted():
                problem = loading.assemble(self._writer, commit, work)
            if problem is None:
                try:
                    self._restore_locked(work, index, in_place=True)
                    with self._guard.trusted():  # the swap went through the WAL: give its size back
                        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    return ApplyResult(index, [])
                except loading.NODE_ERRORS:
                    raise
                except apsw.Error as exc:  # the file passed quick_check yet SQLite refused it: alike everywhere
                    problem = f"load {commit.load_id} failed: {exc}"
        finally:
            snapshot.remove(work)
        return self._run([(index, LoadAbort(commit.load_id, problem))])[0]

    def _plan(self, batch: Sequence[tuple[int, bytes | None]]) -> list[tuple[int, Payload | BadEntry | None, bool]]:
        """Validate the batch's indexes and decode the new entries before touching SQLite."""
        plan: list[tuple[int, Payload | BadEntry | None, bool]] = []
        expected = self._state.applied_index + 1
        for pos, (index, data) in enumerate(batch):
            if pos and index != batch[pos - 1][0] + 1:
                raise StoreError(f"batch indexes must be consecutive: {batch[pos - 1][0]} then {index}")
            if index < expected:
                plan.append((index, None, True))
                continue
            if index != expected:
                raise StoreError(f"entry {index} would leave a gap after applied index {expected - 1}")
            plan.append((index, None if data is None else _decode(index, data), False))
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
        with self._reader() as reader:
            return read_snapshot(reader, statements, ReadOptions(associative, blob_array, qualify_columns,
                                                                 timeout_s or 0.0))

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
        with self._write_lock:
            return self._restore_locked(os.fspath(path), applied_index)

    def _restore_locked(self, source_path: str, applied_index: int | None, *, in_place: bool = False) -> int:
        """restore_from's work, under the write lock; ``in_place`` lets it prepare the source
        file itself (a scratch file the caller owns) instead of a copy of it."""
        page_size = snapshot.page_of(self._writer)
        source = apsw.Connection(source_path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            direct = applied_index is None and not snapshot.needs_preparation(source, page_size)
        finally:
            source.close()
        if direct:
            self._restore_pages(source_path)
        elif in_place:
            snapshot.prepare_in_place(source_path, page_size, applied_index)
            self._restore_pages(source_path)
        else:
            self._restore_prepared(source_path, page_size, applied_index)
        self._applier.reload()
        self._state = self._read_state()
        self._applier.restore_connection_state(self._state)
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


def _fsync_file(path: str) -> None:
    """fsync `path` if it exists (a WAL that a checkpoint truncated away holds nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode(index: int, data: bytes) -> Payload | BadEntry:
    """An entry's command; a payload that no build can apply becomes a BadEntry (an error
    result on every node); one from a newer build stops the batch (NewerCommand)."""
    try:
        return decode_command(data)
    except UnsupportedCommandVersion as exc:
        raise NewerCommand(index, exc) from exc
    except CommandError as exc:
        return BadEntry(f"entry {index} is not a valid command: {exc}")


__all__ = ["META_TABLE", "ApplyResult", "Database", "NewerCommand", "StoreError"]
