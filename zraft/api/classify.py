"""SQLite's own read/write verdict for /db/request, from this node's database file.

Like rqlite (db.go StmtReadOnlyWithConn) each statement is compiled against the local schema
and asked ``sqlite3_stmt_readonly``; EXPLAIN counts as a read; a statement that does not
compile counts as a write, so it goes through the log and fails there with the real message.
"""

from __future__ import annotations

import os
import re

import apsw
import apsw.ext

_DISALLOWED_PRAGMA = re.compile(
    r"^\s*PRAGMA\s+(?:[\w\"`\[\]]+\s*\.\s*)?[\"`\[]?"
    r"(?:(?:journal_mode|wal_autocheckpoint|synchronous|query_only)[\"`\]]?\s*=|wal_checkpoint)",
    re.IGNORECASE)


def disallowed_pragma(sql: str) -> bool:
    """rqlite's request-level check (db/state.go): PRAGMAs that would break the node."""
    return any(_DISALLOWED_PRAGMA.match(part) for part in sql.split(";"))


def all_read_only(db_path: str, sqls: list[str]) -> bool:
    """True when every statement in every string is read-only for SQLite."""
    if not os.path.exists(db_path):
        return False
    conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return all(_read_only(conn, sql) for sql in sqls)
    finally:
        conn.close()


def _read_only(conn: apsw.Connection, sql: str) -> bool:
    rest: str | None = sql
    while rest and rest.strip():
        try:
            info = apsw.ext.query_info(conn, rest)
        except apsw.Error:
            return False
        if info.first_query and not (info.is_readonly or info.is_explain):
            return False
        if info.query_remaining == rest:
            break
        rest = info.query_remaining
    return True
