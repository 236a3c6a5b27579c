"""The ``_zraft_meta`` table: what the database itself must remember about replication.

Rows (``key TEXT PRIMARY KEY, value``):

- ``applied_index``: last log index whose effects are in this file;
- ``last_insert_rowid`` and ``changes``: the writer connection's values of SQLite's
  ``sqlite3_last_insert_rowid``/``sqlite3_changes`` after that entry;
- ``foreign_keys``: the replicated ``PRAGMA foreign_keys`` setting (0 or 1), which the
  writer connection takes on open and after every entry that sets it (apply.py). A file
  written before this row existed reads as 0, which is what it was.

Why the last two: rqlite answers every write with those connection values, and they leak
from one request into the next (an UPDATE reports the rowid of an earlier INSERT, a DROP
TABLE reports the previous statement's counts; rqlite's system tests expect this). SQL can
also read them (``last_insert_rowid()``, ``changes()``). To copy rqlite *and* stay
deterministic, the values must survive restarts and snapshots, so they are stored with the
applied index and put back into a fresh connection.

Values are fixed-width signed decimal TEXT (``+00000000000000000042``): readable in the
sqlite3 shell, ``CAST(value AS INTEGER)`` works, and a fixed width lets the store rewrite
them with SQLite's incremental BLOB I/O, which (unlike an UPDATE) does not touch
``changes()`` or ``last_insert_rowid()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import apsw

META_TABLE = "_zraft_meta"
KEYS = ("applied_index", "last_insert_rowid", "changes", "foreign_keys")
_REQUIRED = KEYS[:3]
"""Rows every zraft file has; later ones default to 0 when missing (older files)."""
_WIDTH = 20

DDL = f"CREATE TABLE IF NOT EXISTS {META_TABLE}(key TEXT PRIMARY KEY, value)"


@dataclass(frozen=True, slots=True)
class MetaState:
    """Replication state stored in the database file."""

    applied_index: int = 0
    last_insert_rowid: int = 0
    changes: int = 0
    foreign_keys: int = 0


def encode(value: int) -> str:
    return f"{value:+0{_WIDTH}d}"


def seed_sql() -> str:
    """Statement that creates the rows that are missing, with zero values."""
    rows = ", ".join(f"('{key}', '{encode(0)}')" for key in KEYS)
    return f"INSERT OR IGNORE INTO {META_TABLE}(key, value) VALUES {rows}"


def read(conn: apsw.Connection) -> MetaState | None:
    """The stored state, or None if this file has no meta table in exactly our format."""
    if not conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (META_TABLE,)).get:
        return None
    found = dict(conn.execute(f"SELECT key, value FROM {META_TABLE}"))
    for key in KEYS[len(_REQUIRED):]:
        found.setdefault(key, encode(0))
    values = [found.get(key) for key in KEYS]
    if not all(isinstance(v, str) and len(v) == _WIDTH for v in values):
        return None
    return MetaState(*(int(str(v)) for v in values))


def replace(conn: apsw.Connection, state: MetaState) -> None:
    """Recreate the meta table holding ``state`` (for files that did not come from zraft)."""
    rows = ", ".join(f"('{k}', '{encode(v)}')" for k, v in zip(KEYS, _values(state), strict=True))
    conn.execute(f"BEGIN; DROP TABLE IF EXISTS {META_TABLE}; {DDL}; INSERT INTO {META_TABLE} VALUES {rows}; COMMIT")


def rowids(conn: apsw.Connection) -> dict[str, int]:
    """Rowid of each meta row, needed to open them for BLOB I/O."""
    return {key: int(rowid) for key, rowid in conn.execute(f"SELECT key, rowid FROM {META_TABLE}")}


def write(conn: apsw.Connection, where: dict[str, int], state: MetaState, stored: MetaState | None = None) -> None:
    """Overwrite the stored values in place (inside the caller's transaction); with ``stored``
    (what the file holds now), only those that differ from it."""
    before = _values(stored) if stored is not None else (None,) * len(KEYS)
    for key, value, old in zip(KEYS, _values(state), before, strict=True):
        if value != old:
            with conn.blob_open("main", META_TABLE, "value", where[key], True) as blob:
                blob.write(encode(value).encode("ascii"))


def write_one(conn: apsw.Connection, where: dict[str, int], key: str, value: int) -> None:
    """Overwrite one stored value in place, without touching changes()/last_insert_rowid()."""
    with conn.blob_open("main", META_TABLE, "value", where[key], True) as blob:
        blob.write(encode(value).encode("ascii"))


def _values(state: MetaState) -> tuple[int, int, int, int]:
    return state.applied_index, state.last_insert_rowid, state.changes, state.foreign_keys
