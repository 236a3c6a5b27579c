"""rqlite's /db/load of SQL text: the dump's statements as one log entry.

A SQLite file takes another path, through the log in chunks (zraft.api.loads); what reaches
here is everything else. SQL text is split into statements (the dump's own BEGIN/COMMIT and
PRAGMA foreign_keys lines are dropped: the command's transaction flag does their job) that
run as one transaction on every node. Text that is not UTF-8 is a ValueError (the api answers
400).
"""

from __future__ import annotations

import re
import sqlite3

from zraft.store.command import Statement

SQLITE_MAGIC = b"SQLite format"
_SKIP = re.compile(r"^\s*(BEGIN(\s+TRANSACTION)?|COMMIT|END(\s+TRANSACTION)?|PRAGMA\s+foreign_keys\s*=\s*\w+)\s*;?\s*$",
                   re.IGNORECASE)


def is_sqlite_file(data: bytes) -> bool:
    """rqlite's test (db/state.go IsValidSQLiteData): the first 13 bytes."""
    return data[:13] == SQLITE_MAGIC


def load_statements(body: bytes) -> list[Statement]:
    """The statements one /db/load body of SQL text becomes (ValueError for undecodable text)."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ValueError("invalid request: body is neither a SQLite file nor UTF-8 SQL text") from None
    kept = [s for s in split_sql(text) if not _SKIP.match(s)]
    return [Statement("\n".join(kept))] if kept else []


def split_sql(text: str) -> list[str]:
    """Complete statements of ``text`` (sqlite3.complete_statement decides where one ends)."""
    out: list[str] = []
    start = 0
    for match in re.finditer(";", text):
        candidate = text[start:match.end()]
        if sqlite3.complete_statement(candidate):
            if candidate.strip(" \t\r\n;"):
                out.append(candidate.strip())
            start = match.end()
    rest = text[start:].strip()
    if rest:
        out.append(rest)
    return out
