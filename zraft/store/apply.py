"""Applying a batch of committed log entries to SQLite: one transaction, one savepoint each.

Layout of one batch::

    BEGIN IMMEDIATE
      SAVEPOINT zraft_entry            -- entry i
        [SAVEPOINT zraft_stmt ... RELEASE zraft_stmt]   -- per statement, non-transactional
      RELEASE zraft_entry              -- or ROLLBACK TO + RELEASE when the entry fails as a whole
      ...
      write _zraft_meta: applied index, last_insert_rowid, changes   (BLOB I/O, see meta.py)
    COMMIT

The batch is one fsync-free commit (cheap), every entry keeps its own atomicity, and the
applied index can never disagree with the data because both change in the same commit.

Connection values (``last_insert_rowid``, ``changes``) carry from one entry to the next as
they do in rqlite. Before each attempt the connection is put back into the state recorded
by the last commit, so a fresh process, a restored snapshot or a rolled-back attempt all
continue from the same values a never-interrupted node would have.

``INSERT OR ROLLBACK`` and ``RAISE(ROLLBACK)`` are the one way a user statement can end the
whole transaction (and so undo the earlier entries of the batch). That is detected, the
failing statement is recorded, and the batch is re-run from BEGIN with that statement
answered by its recorded error instead of being executed again. Every node takes the same
path for the same entry, so the outcome does not depend on how entries were batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import apsw

from zraft.store import meta
from zraft.store.command import Command, Statement
from zraft.store.execute import StatementFailed, execute
from zraft.store.guard import Guard
from zraft.store.meta import META_TABLE, MetaState
from zraft.store.results import Result, error_result, render

Entries = Sequence[tuple[int, Command | None]]
_Known = dict[tuple[int, int], str]
"""(entry index, statement position) -> error message of a statement that ended the transaction."""


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
    """A user statement rolled back the whole batch transaction (ON CONFLICT ROLLBACK)."""

    def __init__(self, index: int, position: int, message: str) -> None:
        super().__init__(message)
        self.index, self.position, self.message = index, position, message


class Applier:
    """Runs batches of decoded entries on the single writer connection."""

    def __init__(self, conn: apsw.Connection, guard: Guard) -> None:
        self._conn = conn
        self._guard = guard
        self._rowids = meta.rowids(conn)
        self._read_only = False

    def reload(self) -> None:
        """Call after the database file was replaced: meta rows may have moved."""
        self._rowids = meta.rowids(self._conn)

    def internal(self, sql: str, bindings: Sequence[object] | None = None) -> None:
        """Run one of the store's own statements: unchecked by the guard and never cached."""
        with self._guard.trusted():
            self._conn.execute(sql, bindings, can_cache=False).fetchall()

    def apply(self, entries: Entries, start: MetaState) -> tuple[list[ApplyResult], MetaState]:
        """Apply ``entries`` (consecutive, all new) atomically; returns results and new state."""
        known: _Known = {}
        while True:
            self.restore_connection_state(start)
            try:
                return self._attempt(entries, known)
            except _TransactionLost as lost:
                known[(lost.index, lost.position)] = lost.message

    def restore_connection_state(self, state: MetaState) -> None:
        """Make the connection's last_insert_rowid()/changes() equal the recorded ones."""
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
        self.internal("BEGIN IMMEDIATE")
        try:
            out = [self._entry(index, cmd, known) for index, cmd in entries]
            end = MetaState(entries[-1][0], self._conn.last_insert_rowid(), self._conn.changes())
            with self._guard.trusted():
                meta.write(self._conn, self._rowids, end)
            self.internal("COMMIT")
            return out, end
        except BaseException:
            if not self._conn.get_autocommit():
                self.internal("ROLLBACK")
            raise

    def _entry(self, index: int, cmd: Command | None, known: _Known) -> ApplyResult:
        if cmd is None:
            return ApplyResult(index, [])
        self.internal("SAVEPOINT zraft_entry")
        self._read_only = cmd.read_only
        try:
            if cmd.transaction:
                results = self._all_or_nothing(index, cmd.statements, known)
            else:
                results = self._each_on_its_own(index, cmd.statements, known)
        finally:
            self._read_only = False
        self.internal("RELEASE zraft_entry")
        return ApplyResult(index, results, query=cmd.read_only)

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
                break
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
                results.append(self._statement(index, pos, stmt, known))
            except StatementFailed as failed:
                results.append(error_result(failed.message))
                self.internal(f"ROLLBACK TO {savepoint}")
            if savepoint == "zraft_stmt":
                self.internal("RELEASE zraft_stmt")
        return results

    def _statement(self, index: int, pos: int, stmt: Statement, known: _Known) -> Result:
        recorded = known.get((index, pos))
        if recorded is not None:
            raise StatementFailed(recorded)
        try:
            return execute(self._conn, self._guard, stmt, read_only=self._read_only)
        except StatementFailed as failed:
            if self._conn.get_autocommit():
                raise _TransactionLost(index, pos, failed.message) from failed
            raise
