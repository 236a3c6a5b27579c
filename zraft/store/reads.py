"""Read-only access to a node's SQLite file, for any process on the node.

The store process reads through its `Database` reader pool; the api process asks SQLite
whether a /db/request is read-only (and may later read the file itself). Both open their
connections here, so that a read connection is the same everywhere: read-only at the file
level (SQLITE_OPEN_READONLY: no statement can write, whatever it is), guarded like the writer
(zraft.store.guard, so that a statement the store would refuse does not compile here either),
and with a busy timeout for the moments a WAL reader must wait (recovery, a checkpoint
restarting the WAL).

`is_read_only` is zraft's one read/write classifier: SQLite's own verdict
(`sqlite3_stmt_readonly`), statement by statement, as rqlite's `StmtReadOnlyWithConn` does:
- EXPLAIN counts as read-only (it runs nothing);
- a statement that does not compile (a syntax error, a missing table, one the guard refuses)
  counts as a write: it is then sent through the log, where it fails with its real message
  on every node alike, rather than being refused here with a message of ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import apsw
import apsw.ext

from zraft.store.guard import Guard

BUSY_TIMEOUT_MS = 5_000


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
        except apsw.Error:
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
