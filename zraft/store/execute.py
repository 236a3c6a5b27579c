"""Run one user statement on a connection and turn the outcome into a raw rqlite result.

Errors are sorted in two kinds. SQL-level errors (syntax, constraint, no such table, bad
bindings, refused by the guard) are deterministic: every node hits the same one for the same
entry, so they become the statement's result. Environmental errors (disk full, I/O, corrupt
file, out of memory, busy) depend on the node, not on the log; turning them into a result
would let this node's database diverge, so they propagate and the caller must stop applying.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from zraft.store.command import Statement
from zraft.store.guard import Guard
from zraft.store.meta import META_TABLE
from zraft.store.results import Result, SQLiteValue, error_result, rows_result, write_result

QUERY_WRITE_ERROR = "attempt to change database via query operation"
"""rqlite's per-statement error (db.go ``ErrQueryWrite``) for a write sent to a read path."""

_META_INDEX_PREFIX = f"sqlite_autoindex_{META_TABLE}_"

FATAL_ERRORS: tuple[type[BaseException], ...] = (
    apsw.IOError,
    apsw.FullError,
    apsw.CorruptError,
    apsw.NotADBError,
    apsw.CantOpenError,
    apsw.NoMemError,
    apsw.BusyError,
    apsw.LockedError,
    apsw.InternalError,
    apsw.ProtocolError,
    apsw.ConnectionClosedError,
    apsw.ThreadingViolationError,
)


class StatementFailed(Exception):
    """A user statement failed in a way that belongs in its result, not in the node's logs."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Capture:
    """Exec tracer: records each statement's columns before it runs; may veto writes.

    EXPLAIN of a write counts as a read (it only describes the program), as in rqlite.

    A string can hold several statements; like go-sqlite3, the last one gives the result.
    """

    def __init__(self, read_only: bool, qualify: bool = False) -> None:
        self.read_only = read_only
        self.qualify = qualify
        self.refused_write = False
        self.description: Sequence[tuple[str, str | None]] | None = None
        self.rows: list[tuple[SQLiteValue, ...]] = []

    def __call__(self, cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        if not cursor.has_vdbe:  # only whitespace or comments: not a statement
            return True
        if self.read_only and not (cursor.is_readonly or cursor.is_explain):
            self.refused_write = True
            return False
        self.description = _description(cursor, self.qualify)
        self.rows = []
        return True


def _description(cursor: apsw.Cursor, qualify: bool) -> Sequence[tuple[str, str | None]]:
    """Column names and declared types; with rqlite's qualify_columns, ``table.column`` for
    columns that come straight from a table."""
    if not qualify:
        return cursor.get_description()
    return [(f"{table}.{name}" if table else name, decl)
            for name, decl, _db, table, _origin in cursor.description_full]


def execute(conn: apsw.Connection, guard: Guard, stmt: Statement, *, read_only: bool,
            qualify: bool = False, can_cache: bool = False) -> Result:
    """Execute ``stmt``; return its raw result or raise StatementFailed (fatal errors propagate).

    Statements that return columns (SELECT, RETURNING, PRAGMA) give the rows shape, others the
    write shape built from ``last_insert_rowid``/``changes`` as go-sqlite3 reads them.

    The statement is prepared afresh (``can_cache=False``): the guard checks every execution
    in the mode of the entry it belongs to, and a prepare happens alike on every node
    whatever the history of its connection (the step budget counts it, budget.py).
    """
    capture = _Capture(read_only, qualify)
    _run(conn, guard, stmt, capture, can_cache)
    if capture.description or read_only:
        try:
            return rows_result(capture.description or (), capture.rows)
        except ValueError as exc:
            raise StatementFailed(str(exc)) from exc
    if capture.description is None:
        return write_result(0, 0)  # only comments/whitespace: go-sqlite3 reports 0, 0
    return write_result(conn.last_insert_rowid(), conn.changes())


def execute_to_result(conn: apsw.Connection, guard: Guard, stmt: Statement, *, read_only: bool,
                      qualify: bool = False, can_cache: bool = False) -> Result:
    """Like execute() but with the failure folded into an error result."""
    try:
        return execute(conn, guard, stmt, read_only=read_only, qualify=qualify, can_cache=can_cache)
    except StatementFailed as failed:
        return error_result(failed.message)


def is_meta_row(row: Sequence[SQLiteValue]) -> bool:
    """A row of the schema table (or of a listing PRAGMA) that describes zraft's own table."""
    return any(isinstance(v, str) and (v == META_TABLE or v.startswith(_META_INDEX_PREFIX)) for v in row)


def _run(conn: apsw.Connection, guard: Guard, stmt: Statement, capture: _Capture, can_cache: bool) -> None:
    cursor = conn.cursor()
    cursor.exec_trace = capture
    guard.schema_read = False
    try:
        for row in cursor.execute(stmt.sql, stmt.params, can_cache=can_cache and not capture.read_only):
            if not capture.rows:
                # the statement may have been re-prepared on its first step (schema change)
                capture.description = _description(cursor, capture.qualify)
            if guard.schema_read and is_meta_row(row):
                continue  # zraft's bookkeeping table is not the user's: hide it from listings
            capture.rows.append(row)
    except apsw.ExecTraceAbort as exc:
        raise StatementFailed(QUERY_WRITE_ERROR) from exc
    except apsw.AuthError as exc:
        raise StatementFailed(guard.explain(exc)) from exc
    except FATAL_ERRORS:
        raise
    except apsw.InterruptError as exc:  # the caller's db_timeout ran out (progress handler)
        raise StatementFailed("query timeout" if capture.read_only else "execute timeout") from exc
    except apsw.ReadOnlyError as exc:
        raise StatementFailed(QUERY_WRITE_ERROR if capture.read_only else str(exc)) from exc
    except apsw.Error as exc:  # a guard refusal of a function comes as SQLITE_ERROR, not SQLITE_AUTH
        raise StatementFailed(guard.explain(exc)) from exc
    except KeyError as exc:
        raise StatementFailed(f"missing named parameter: {exc.args[0]}") from exc
    except UnicodeDecodeError as exc:
        raise StatementFailed(f"TEXT value is not valid UTF-8: {exc.reason}") from exc
    except (TypeError, OverflowError, ValueError) as exc:
        raise StatementFailed(f"bad parameter: {exc}") from exc
