"""Bulk loads through the log: a SQLite file of any size, in bounded chunks, on every node.

`/db/load` and `/boot` of a SQLite file replace the whole database. The file cannot travel as
one log entry (entries are bounded by the wire cap, and a whole file in one message would be
held in memory by every process it passes), so the proposer splits it:

1. ``LoadChunk(id, seq, bytes)`` entries, each at most ``MAX_LOAD_CHUNK`` bytes. Applying one
   writes it into the staging table ``_zraft_load`` *inside the database*, in the batch's
   transaction. Staging is therefore exactly as durable as applied data: it is covered by the
   applied index, survives kill -9 and power loss with it, and travels inside snapshot images,
   so a node that installs an image in the middle of a load has the chunks before it as every
   other node does. (A side file would not: a node restored from an image, or one whose WAL
   commit outlived the side file's unsynced write, would fail a commit the others pass.)
   Chunk 0 of a load clears whatever an earlier, unfinished load left staged.
2. ``LoadCommit(id, chunks, size, crc)``: every node assembles the staged chunks into a scratch
   file beside the database, checks count, size, CRC-32 and SQLite's ``quick_check``, then
   swaps the file in with the backup API (readers see the old or the new database, never a
   mix), stamped with the commit's index as the applied index. Every check is a function of
   the log's bytes, so every node passes or fails alike; a failure is the entry's error result
   and drops the staged chunks, changing nothing else. Errors of this node's disk (full, I/O)
   are raised instead, as for any entry: the store retries later rather than answer
   differently from the others.

The proposer (the api, zraft/api/loads.py) checks the file before the first chunk enters the
log, so a client's bad file is a 400 and the cluster never sees it; the checks here stop what a
forged or damaged entry could do.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable

import apsw

from zraft.store.command import LoadAbort, LoadChunk, LoadCommit
from zraft.store.image import SQLITE_MAGIC
from zraft.store.snapshot import remove

STAGING_TABLE = "_zraft_load"
_DDL = f"CREATE TABLE IF NOT EXISTS {STAGING_TABLE}(load TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, " \
       "PRIMARY KEY(load, seq))"
NODE_ERRORS = (apsw.FullError, apsw.IOError, apsw.CantOpenError, apsw.NoMemError, apsw.BusyError, OSError)
"""Failures that depend on this node, not on the log: raised, never answered."""

Run = Callable[[str, tuple[object, ...]], None]
"""Runs one of the store's own statements on the writer, inside the current transaction."""


def stage(run: Run, chunk: LoadChunk) -> None:
    """Apply one chunk: keep its bytes in the staging table (a repeat overwrites, the same)."""
    run(_DDL, ())
    if chunk.seq == 0:
        run(f"DELETE FROM {STAGING_TABLE} WHERE load <> ?", (chunk.load_id,))
    run(f"INSERT OR REPLACE INTO {STAGING_TABLE}(load, seq, data) VALUES (?, ?, ?)",
        (chunk.load_id, chunk.seq, chunk.data))


def unstage(run: Run, load_id: str) -> None:
    """Drop what ``load_id`` staged (an empty staging table stays until the next swap)."""
    run(_DDL, ())
    run(f"DELETE FROM {STAGING_TABLE} WHERE load = ?", (load_id,))


def assemble(conn: apsw.Connection, commit: LoadCommit, path: str) -> str | None:
    """Write the staged chunks of ``commit`` to ``path`` and check them; the reason the load
    must fail (the same on every node), or None when ``path`` holds a sound SQLite file.
    Raises NODE_ERRORS for failures of this node's disk."""
    remove(path)
    if not conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (STAGING_TABLE,)).get:
        return f"load {commit.load_id} failed: none of its chunks were staged"
    crc, size, expected = 0, 0, 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        rows = conn.execute(f"SELECT seq, data FROM {STAGING_TABLE} WHERE load = ? ORDER BY seq", (commit.load_id,))
        for seq, data in rows:
            if seq != expected or not isinstance(data, bytes):
                return f"load {commit.load_id} failed: chunk {expected} is missing"
            crc = zlib.crc32(data, crc)
            size += len(data)
            expected += 1
            _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if expected != commit.chunks or size != commit.size or crc != commit.crc:
        return (f"load {commit.load_id} failed: staged {expected} chunks, {size} bytes, CRC {crc:08x}; "
                f"the commit names {commit.chunks} chunks, {commit.size} bytes, CRC {commit.crc:08x}")
    return check_file(path)


def check_file(path: str) -> str | None:
    """Why the file at ``path`` cannot be loaded (not SQLite, or damaged), or None. Opens it
    read-only and runs ``PRAGMA quick_check``; raises NODE_ERRORS for this node's failures."""
    with open(path, "rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            return "invalid SQLite data: the file does not start with the SQLite header"
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            verdict = [str(row[0]) for row in conn.execute("PRAGMA quick_check(10)")]
        finally:
            conn.close()
    except NODE_ERRORS:
        raise
    except apsw.Error as exc:
        return f"invalid SQLite data: {exc}"
    if verdict != ["ok"]:
        return "invalid SQLite data: quick_check found: " + "; ".join(verdict)
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


__all__ = ["NODE_ERRORS", "STAGING_TABLE", "LoadAbort", "assemble", "check_file", "stage", "unstage"]
