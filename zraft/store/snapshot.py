"""File-level copies of the database with SQLite's online backup API.

The backup API copies pages under one read transaction of the source, so the copy is a
consistent point-in-time image (applied index included) while the writer keeps going, and it
writes the destination in one write transaction, so readers of a restored database see the
old contents or the new ones, never a mix.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from zraft.store import meta
from zraft.store.meta import MetaState


def copy_pages(dest: apsw.Connection, source: apsw.Connection) -> None:
    """Copy all of ``source`` over ``dest`` in a single backup step."""
    with dest.backup("main", source, "main") as backup:
        backup.step(-1)


def write_snapshot(source: apsw.Connection, path: str) -> int:
    """Write a self-contained (rollback-journal) copy of ``source`` to ``path`` durably.

    Written to a temporary name, fsynced, then renamed, so ``path`` is either absent or
    complete. Returns the applied index recorded in the copy.
    """
    tmp = f"{path}.tmp"
    remove(tmp)
    dest = apsw.Connection(tmp)
    try:
        copy_pages(dest, source)
        dest.execute("PRAGMA journal_mode=DELETE")
        index = applied_index_of(dest)
    finally:
        dest.close()
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(os.path.dirname(os.path.abspath(path)))
    return index


def prepare_restore(source_path: str, work_path: str, page_size: int, applied_index: int | None) -> None:
    """Make ``work_path`` a copy of ``source_path`` that can be backed up into our database.

    A backup into a WAL database needs equal page sizes, and the result must carry our
    meta table; a file that lacks either (a user upload, say) is fixed up here, in a scratch
    copy, so the final swap into the live database stays a single step. ``applied_index``,
    if given, replaces the file's own (connection values restart from zero).
    """
    remove(work_path)
    source = apsw.Connection(source_path, flags=apsw.SQLITE_OPEN_READONLY)
    work = apsw.Connection(work_path)
    try:
        copy_pages(work, source)
    finally:
        source.close()
        work.close()
    prepare_in_place(work_path, page_size, applied_index)


def prepare_in_place(path: str, page_size: int, applied_index: int | None) -> None:
    """prepare_restore's work on a scratch file nobody else uses (its copy, or a bulk load's
    assembled file): rollback-journal mode, our page size, our meta table."""
    work = apsw.Connection(path)
    try:
        work.execute("PRAGMA journal_mode=DELETE")
        if page_of(work) != page_size:
            work.execute(f"PRAGMA page_size={int(page_size)}; VACUUM")
        state = MetaState(applied_index) if applied_index is not None else meta.read(work) or MetaState()
        meta.replace(work, state)
    finally:
        work.close()


def needs_preparation(source: apsw.Connection, page_size: int) -> bool:
    """True if ``source`` cannot be backed up into our database as it is."""
    return page_of(source) != page_size or meta.read(source) is None


def page_of(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA page_size").get or 0)


def applied_index_of(conn: apsw.Connection) -> int:
    state = meta.read(conn)
    return 0 if state is None else state.applied_index


def remove(path: str) -> None:
    """Delete a database file and any journal/WAL files beside it."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


def _fsync(path: str) -> None:
    """fsync a file or a directory (the latter makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
