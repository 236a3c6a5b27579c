"""rqlite's /db/backup and /db/load, done with files and SQL only (no new log command).

- Backup reads this node's database file (the API process runs next to the store process
  and SQLite's WAL lets any number of readers in): a consistent copy with the online backup
  API, zraft's bookkeeping table removed, rollback-journal mode, or a SQL dump of that copy.
- Load goes through the log as one ordinary transaction command, so every node applies it:
  SQL text is split into statements (the dump's own BEGIN/COMMIT and PRAGMA foreign_keys
  lines are dropped: the command's transaction flag does their job); a SQLite file is turned
  into a SQL dump first, preceded by DROPs of every user object this node currently has, so
  the load replaces the database as rqlite's LOAD command does.
- Bad input is a ValueError (the api answers 400): text that is not UTF-8, a file that
  starts like SQLite but is not a database, or one whose text is not UTF-8. A dump keeps
  TEXT values that are not valid UTF-8 byte for byte (they can be stored with CAST), where
  Python's sqlite3 would fail on them.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator

import apsw

from zraft.store.command import Statement
from zraft.store.meta import META_TABLE

SQLITE_MAGIC = b"SQLite format"
_SKIP = re.compile(r"^\s*(BEGIN(\s+TRANSACTION)?|COMMIT|END(\s+TRANSACTION)?|PRAGMA\s+foreign_keys\s*=\s*\w+)\s*;?\s*$",
                   re.IGNORECASE)


def is_sqlite_file(data: bytes) -> bool:
    """rqlite's test (db/state.go IsValidSQLiteData): the first 13 bytes."""
    return data[:13] == SQLITE_MAGIC


def load_statements(body: bytes, db_path: str) -> list[Statement]:
    """The statements one /db/load body becomes (raises ValueError for undecodable text)."""
    if is_sqlite_file(body):
        fd, tmp = tempfile.mkstemp(suffix=".sqlite")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            dump = [s for s in _iterdump(tmp) if not _SKIP.match(s)]
        except sqlite3.Error as exc:  # the magic was there, the rest is not a database we can read
            raise ValueError(f"invalid request: not a readable SQLite file: {exc}") from None
        finally:
            _remove(tmp)
        return [Statement(s) for s in drop_user_objects(db_path) + dump]
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


def drop_user_objects(db_path: str) -> list[str]:
    """DROPs for every user table and view in this node's database (indexes and triggers go with them)."""
    if not os.path.exists(db_path):
        return []
    conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = list(conn.execute(
            "SELECT type, name FROM sqlite_schema WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> ?", (META_TABLE,)))
    finally:
        conn.close()
    quote = '"{}"'.format
    return [f"DROP {str(kind).upper()} IF EXISTS {quote(str(name).replace(chr(34), chr(34) * 2))}"
            for kind, name in sorted(rows, key=lambda r: r[0] != "view")]


def _iterdump(path: str, lossless: bool = False) -> Iterator[str]:
    conn = sqlite3.connect(path)
    if lossless:
        conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    try:
        for line in conn.iterdump():
            if META_TABLE in line and (f'"{META_TABLE}"' in line or f"TABLE {META_TABLE}" in line):
                continue
            yield line
    finally:
        conn.close()


def _remove(path: str) -> None:
    for p in (path, f"{path}-journal", f"{path}-wal", f"{path}-shm"):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass
