"""Applying a batch of committed log entries to SQLite: one transaction, one savepoint each.

Layout of one batch::

    BEGIN IMMEDIATE
      SAVEPOINT zraft_entry            -- entry i
        [SAVEPOINT zraft_stmt ... RELEASE zraft_stmt]   -- per statement, non-transactional
      RELEASE zraft_entry              -- or ROLLBACK TO + RELEASE when the entry fails as a whole
      ...
      write _zraft_meta: applied index, last_insert_rowid, changes, foreign_keys (BLOB I/O)
    COMMIT

The batch is one fsync-free commit (cheap), every entry keeps its own atomicity, and the
applied index can never disagree with the data because both change in the same commit.

Connection values (``last_insert_rowid``, ``changes``) carry from one entry to the next as
they do in rqlite. Before each attempt the connection is put back into the state recorded
by the last commit, so a fresh process, a restored snapshot or a rolled-back attempt all
continue from the same values a never-interrupted node would have.

``INSERT OR ROLLBACK``, ``RAISE(ROLLBACK)`` and a statement interrupted by its step budget
are the ways a user statement can end the whole transaction (and so undo the earlier entries
of the batch). That is detected, the failing statement is recorded, and the batch is re-run
from BEGIN with that statement answered by its recorded error instead of being executed
again. Every node takes the same path for the same entry, so the outcome does not depend on
how entries were batched.

``PRAGMA foreign_keys=ON|OFF`` (a statement of its own, in a write entry) is replicated:
the entry records the value in ``_zraft_meta`` and ends its batch; the setting is applied to
the connection between that commit and the next BEGIN (SQLite ignores the pragma inside a
transaction), so it takes effect from the next entry on, on every node whatever its
batching. While foreign keys are on, a statement (or, with ``transaction``, an entry) that
leaves deferred foreign-key violations fails with "FOREIGN KEY constraint failed", as the
commit that ends it would in rqlite.

A stamped entry (command version 3) runs with the clock reading its ``time_ms``, with
``random()``/``randomblob()`` drawn from its ``seed`` (determinism.py) and within its step
``budget`` (budget.py). After each statement of a write entry the applier also refuses what
would let SQLite fall back on its process-wide random generator: a row written with rowid
2**63-1 (SQLite then picks new rowids at random, or fails AUTOINCREMENT with "database or
disk is full", which is indistinguishable from a full disk) and a ``CREATE TABLE ... AS``
whose result has so many equal column names that SQLite names the copies at random.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import apsw

from zraft.store import meta
from zraft.store.budget import StepBudget
from zraft.store import loading
from zraft.store.command import Command, LoadAbort, LoadChunk, Statement
from zraft.store.determinism import EntryClock, EntryRandom
from zraft.store.execute import StatementFailed, execute
from zraft.store.guard import Guard, sqlite_boolean
from zraft.store.meta import META_TABLE, MetaState
from zraft.store.results import Result, error_result, render, write_result

MAX_ROWID = (1 << 63) - 1
ROWID_REFUSED = (f"rowid {MAX_ROWID} is reserved: once a table holds it, SQLite picks new rowids at random "
                 "(or fails AUTOINCREMENT), which would make nodes differ")
SEQUENCE_REFUSED = (f"sqlite_sequence may not reach {MAX_ROWID}: AUTOINCREMENT would then fail as if the disk "
                    "were full")
COLUMNS_REFUSED = ("too many result columns share the name {name!r}: SQLite would name the copies at random; "
                   "give them distinct names")
DEFERRED_FK_FAILED = "FOREIGN KEY constraint failed"
_FOREIGN_KEYS = re.compile(
    r"\s*PRAGMA\s+(?:main\s*\.\s*)?foreign_keys\s*(?:=\s*(?P<eq>[\w+-]+|'[^']*'|\"[^\"]*\")"
    r"|\(\s*(?P<paren>[\w+-]+|'[^']*'|\"[^\"]*\")\s*\))\s*;?\s*", re.IGNORECASE)
_NUMBERED = re.compile(r"(.*):(\d+)")


@dataclass(frozen=True, slots=True)
class BadEntry:
    """A payload no build can apply: every node answers it with the same error, nothing runs."""

    message: str


Step = Command | LoadChunk | LoadAbort | BadEntry | None
"""What the applier runs for one entry (None: a no-op or configuration entry)."""
Entries = Sequence[tuple[int, Step]]
_Known = dict[tuple[int, int], tuple[str, bool]]
"""(entry index, statement position) -> (error message, budget exhausted) of a statement that
ended the transaction."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying one log entry produced.

    ``results`` holds one raw rqlite result per non-empty statement (BLOBs still ``bytes``);
    call ``render`` for JSON. ``skipped`` is True when the entry was at or below the applied
    index already (a replay): nothing was executed and ``results`` is empty.
    """

    index: int
    results: list[Result]
    skipped: bool = False
    query: bool = False
    """The entry was a read-only command (strong query): rendered in query shapes."""

    def render(self, *, associative: bool = False, blob_array: bool = False) -> list[Result]:
        """The results as the JSON an rqlite ``/db/execute``, ``/db/query`` or ``/db/request`` would carry."""
        return [render(r, associative=associative, blob_array=blob_array, query=self.query) for r in self.results]


class _TransactionLost(Exception):
    """A user statement rolled back the whole batch transaction (ON CONFLICT ROLLBACK, budget)."""

    def __init__(self, index: int, position: int, message: str, exhausted: bool) -> None:
        super().__init__(message)
        self.index, self.position, self.message, self.exhausted = index, position, message, exhausted


def foreign_keys_setting(sql: str) -> int | None:
    """The value a lone ``PRAGMA foreign_keys=...`` statement sets (SQLite's reading), else None."""
    match = _FOREIGN_KEYS.fullmatch(sql)
    if match is None:
        return None
    value = match.group("eq") or match.group("paren") or ""
    if value[:1] in ("'", '"'):
        value = value[1:-1]
    return sqlite_boolean(value)


class Applier:
    """Runs batches of decoded entries on the single writer connection."""

    def __init__(self, conn: apsw.Connection, guard: Guard, *, clock: EntryClock | None = None,
                 random: EntryRandom | None = None) -> None:
        self._conn = conn
        self._guard = guard
        self._clock = clock
        self._random = random
        self._budget = StepBudget(conn)
        self._rowids = meta.rowids(conn)
        self._read_only = False
        self._seed: int | None = None
        self._foreign_keys = -1
        """The connection's PRAGMA foreign_keys as last set by us (-1: not yet)."""
        self._ends_batch = False
        self._max_rowid_written = False
        self.committed = MetaState()
        """The state of the last commit made by apply(), even if a later part of it failed."""
        conn.set_update_hook(self._on_row)

    def reload(self) -> None:
        """Call after the database file was replaced: meta rows may be missing or have moved."""
        self.internal(f"BEGIN IMMEDIATE; {meta.DDL}; {meta.seed_sql()}; COMMIT")
        self._rowids = meta.rowids(self._conn)

    def internal(self, sql: str, bindings: Sequence[object] | None = None) -> None:
        """Run one of the store's own statements: unchecked by the guard, not counted by the
        budget. They are cached: a user statement never takes one from the cache."""
        guard = self._guard
        guard.internal = True
        try:
            self._conn.execute(sql, bindings, can_cache=True).fetchall()
        finally:
            guard.internal = False

    def apply(self, entries: Entries, start: MetaState) -> tuple[list[ApplyResult], MetaState]:
        """Apply ``entries`` (consecutive, all new) atomically, in one transaction unless an
        entry sets foreign keys (then one per part); returns the results and the new state."""
        self.committed = state = start
        out: list[ApplyResult] = []
        while len(out) < len(entries):
            known: _Known = {}
            while True:
                self.restore_connection_state(state)
                try:
                    part, state = self._attempt(entries[len(out):], known)
                    break
                except _TransactionLost as lost:
                    known[(lost.index, lost.position)] = (lost.message, lost.exhausted)
            self.committed = state
            out.extend(part)
        self.restore_connection_state(state)
        return out, state

    def restore_connection_state(self, state: MetaState) -> None:
        """Make the connection's last_insert_rowid()/changes() and foreign-key setting equal
        the recorded ones (outside a transaction)."""
        if self._foreign_keys != state.foreign_keys:
            self.internal(f"PRAGMA foreign_keys={'ON' if state.foreign_keys else 'OFF'}")
            self._foreign_keys = state.foreign_keys
        if self._conn.changes() != state.changes:
            self._set_changes(state.changes)
        self._conn.set_last_insert_rowid(state.last_insert_rowid)

    def _set_changes(self, count: int) -> None:
        """SQLite has no setter for changes(): run a DML statement touching ``count`` rows, undone.

        O(count), but needed only after open, restore or a failed attempt.
        """
        if count == 0:
            self.internal(f"DELETE FROM {META_TABLE} WHERE 0")
            return
        self.internal("SAVEPOINT zraft_changes")
        self.internal(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            f"INSERT INTO {META_TABLE}(key) SELECT 'scratch ' || i FROM n",
            (count,),
        )
        self.internal("ROLLBACK TO zraft_changes")
        self.internal("RELEASE zraft_changes")

    def _attempt(self, entries: Entries, known: _Known) -> tuple[list[ApplyResult], MetaState]:
        stored = self.committed
        self.internal("BEGIN IMMEDIATE")
        try:
            out: list[ApplyResult] = []
            for index, cmd in entries:
                out.append(self._entry(index, cmd, known))
                if self._ends_batch:
                    break
            foreign_keys = self._stored_foreign_keys() if self._ends_batch else stored.foreign_keys
            end = MetaState(out[-1].index, self._conn.last_insert_rowid(), self._conn.changes(), foreign_keys)
            with self._guard.trusted():  # foreign_keys, if it changed, was written by its entry
                meta.write(self._conn, self._rowids, end, replace(stored, foreign_keys=foreign_keys))
            self.internal("COMMIT")
            return out, end
        except BaseException:
            if not self._conn.get_autocommit():
                self.internal("ROLLBACK")
            raise
        finally:
            self._ends_batch = False

    def _stored_foreign_keys(self) -> int:
        with self._guard.trusted():
            value = self._conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'foreign_keys'").get
        return int(str(value))

    def _entry(self, index: int, cmd: Step, known: _Known) -> ApplyResult:
        if cmd is None:
            return ApplyResult(index, [])
        if isinstance(cmd, BadEntry):
            return ApplyResult(index, [error_result(cmd.message)])
        if isinstance(cmd, (LoadChunk, LoadAbort)):
            return self._load_step(index, cmd)
        self.internal("SAVEPOINT zraft_entry")
        self._begin_entry(cmd)
        try:
            if cmd.transaction:
                results = self._all_or_nothing(index, cmd.statements, known)
            else:
                results = self._each_on_its_own(index, cmd.statements, known)
        finally:
            self._end_entry()
        self.internal("RELEASE zraft_entry")
        return ApplyResult(index, results, query=cmd.read_only)

    def _load_step(self, index: int, step: LoadChunk | LoadAbort) -> ApplyResult:
        """A bulk-load chunk is staged, a failed load's chunks dropped (zraft/store/loading.py)."""
        self.internal("SAVEPOINT zraft_entry")
        if isinstance(step, LoadChunk):
            loading.stage(self.internal, step)
            results: list[Result] = []
        else:
            loading.unstage(self.internal, step.load_id)
            results = [error_result(step.message)]
        self.internal("RELEASE zraft_entry")
        return ApplyResult(index, results)

    def _begin_entry(self, cmd: Command) -> None:
        self._read_only = cmd.read_only
        self._guard.write_entry = not cmd.read_only
        self._seed = cmd.seed
        if self._clock is not None:
            self._clock.now_ms = cmd.time_ms
        self._budget.begin_entry(cmd.budget)

    def _end_entry(self) -> None:
        self._read_only = False
        self._guard.write_entry = False
        if self._clock is not None:
            self._clock.now_ms = None
        self._budget.end_entry()

    def _all_or_nothing(self, index: int, stmts: list[Statement], known: _Known) -> list[Result]:
        """rqlite ?transaction: stop at the first error, undo the entry, report up to it."""
        results: list[Result] = []
        for pos, stmt in enumerate(stmts):
            if stmt.sql == "":
                continue
            try:
                results.append(self._statement(index, pos, stmt, known))
            except StatementFailed as failed:
                results.append(error_result(failed.message))
                self.internal("ROLLBACK TO zraft_entry")
                return results
        if self._deferred_violations():
            results.append(error_result(DEFERRED_FK_FAILED))
            self.internal("ROLLBACK TO zraft_entry")
        return results

    def _each_on_its_own(self, index: int, stmts: list[Statement], known: _Known) -> list[Result]:
        """Without ?transaction every statement stands alone; a failed one changes nothing.

        A lone statement needs no savepoint of its own: the entry's savepoint covers it.
        """
        savepoint = "zraft_stmt" if len(stmts) > 1 else "zraft_entry"
        results: list[Result] = []
        for pos, stmt in enumerate(stmts):
            if stmt.sql == "":
                continue
            if savepoint == "zraft_stmt":
                self.internal("SAVEPOINT zraft_stmt")
            try:
                result = self._statement(index, pos, stmt, known)
                if self._deferred_violations():
                    raise StatementFailed(DEFERRED_FK_FAILED)
                results.append(result)
            except StatementFailed as failed:
                results.append(error_result(failed.message))
                self.internal(f"ROLLBACK TO {savepoint}")
            if savepoint == "zraft_stmt":
                self.internal("RELEASE zraft_stmt")
        return results

    def _statement(self, index: int, pos: int, stmt: Statement, known: _Known) -> Result:
        recorded = known.get((index, pos))
        if recorded is not None:
            message, exhausted = recorded
            self._budget.exceeded = self._budget.exceeded or exhausted
            raise StatementFailed(message)
        if self._budget.exceeded:
            raise StatementFailed(self._budget.message)
        if not self._read_only and stmt.sql.lstrip()[:6].upper() == "PRAGMA":
            setting = foreign_keys_setting(stmt.sql)
            if setting is not None:
                return self._set_foreign_keys(setting)
        if self._random is not None:
            self._random.statement(self._seed, pos)
        self._guard.statement_starts()
        self._max_rowid_written = False
        self._budget.armed = True
        try:
            result = execute(self._conn, self._guard, stmt, read_only=self._read_only)
        except StatementFailed as failed:
            message = self._budget.message if self._budget.exceeded else failed.message
            if self._conn.get_autocommit():
                raise _TransactionLost(index, pos, message, self._budget.exceeded) from failed
            raise StatementFailed(message) from failed
        finally:
            self._budget.armed = False
        if not self._read_only:
            self._check_written()
        return result

    def _set_foreign_keys(self, value: int) -> Result:
        """A lone PRAGMA foreign_keys: record the value; it applies from the next entry on."""
        with self._guard.trusted():
            meta.write_one(self._conn, self._rowids, "foreign_keys", value)
        self._ends_batch = True
        return write_result(self._conn.last_insert_rowid(), self._conn.changes())

    def _on_row(self, op: int, db: str, table: str, rowid: int) -> None:
        if rowid == MAX_ROWID and self._budget.armed and op != apsw.SQLITE_DELETE:
            self._max_rowid_written = True

    def _check_written(self) -> None:
        """Refuse a statement (after it ran, before its savepoint is released) whose effects
        would let SQLite's process-wide random generator into the data."""
        if self._max_rowid_written:
            raise StatementFailed(ROWID_REFUSED)
        if self._guard.sequence_written and self._query_one(
                "SELECT 1 FROM main.sqlite_sequence WHERE seq >= ?", (MAX_ROWID,)):
            raise StatementFailed(SEQUENCE_REFUSED)
        for table in self._guard.created_tables:
            names = [str(row[0]) for row in self._query_all(
                "SELECT name FROM pragma_table_xinfo(?, 'main')", (table,))]
            bases = {m.group(1) for m in map(_NUMBERED.fullmatch, names) if m and m.group(2) == "4"}
            for base in bases:
                if base in names and all(f"{base}:{k}" in names for k in (1, 2, 3)) and any(
                        m and m.group(1) == base and m.group(2) not in ("1", "2", "3", "4")
                        for m in map(_NUMBERED.fullmatch, names)):
                    raise StatementFailed(COLUMNS_REFUSED.format(name=base))

    def _deferred_violations(self) -> bool:
        return self._foreign_keys == 1 and self._conn.status(apsw.SQLITE_DBSTATUS_DEFERRED_FKS)[0] > 0

    def _query_one(self, sql: str, bindings: Sequence[object]) -> bool:
        return bool(self._query_all(sql, bindings))

    def _query_all(self, sql: str, bindings: Sequence[object]) -> list[tuple[object, ...]]:
        with self._guard.trusted():
            return list(self._conn.execute(sql, bindings, can_cache=True))
