"""The blocking half of /db/backup: a consistent copy or SQL dump of this node's database,
written into a scratch file beside it. Every function here runs in a worker thread.

- The api process reads the store's SQLite file directly (WAL lets readers in beside the
  writer). Each reader holds one read transaction for its whole run, so what it sees is
  one point in time while the store goes on applying, and the online backup API can copy in
  small steps (a stepwise copy without it starts over whenever the writer commits).
- Work stops at the next step, row or SQLite progress callback once `cancel` is set (the
  client went away), raising `Cancelled`.
- Scratch files live in the node's data folder (`<data_dir>/tmp`, names `backup-*`), on the
  database's own file system: the space check before a copy is then about the disk that
  matters, and a full disk is reported as `NoSpace`. The caller removes them.
- A binary copy is a plain rollback-journal SQLite file without zraft's bookkeeping table,
  loadable by sqlite3 and by rqlite. A dump is bytes: TEXT that is not valid UTF-8 (it can be
  stored with CAST) comes out byte for byte, because SQLite renders every line itself
  (quote(), then CAST AS BLOB) and Python never decodes a value.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import apsw

from zraft.store.meta import META_TABLE

LOAD_PREFIX = "load-"
SCRATCH_PREFIX = "backup-"
COPY_STEP_PAGES = 1024
"""Pages per online-backup step (4 MiB at the default page size): how often a copy looks at
its cancel flag."""
DISK_HEADROOM_BYTES = 64 << 20
"""Free space a backup must leave on the database's file system, so that a backup never
takes the last bytes the store needs to apply entries."""
BUSY_TIMEOUT_MS = 5000
"""How long opening a read transaction waits for the store (SQLite's locks are held only
briefly, e.g. by a checkpoint)."""
PROGRESS_OPS = 10_000
"""SQLite VM steps between two looks at the cancel flag during VACUUM and dump queries."""
WRITE_BUFFER_BYTES = 1 << 20


class Cancelled(Exception):
    """The backup was given up (its client went away): the worker stopped early."""


class NoSpace(Exception):
    """The scratch folder's file system has not enough room for the backup."""


def clean_scratch(folder: Path) -> int:
    """Create `folder` if needed and remove any scratch file a previous run left (a crash,
    kill -9); the number removed. Only files named `backup-*` and `load-*` (a load's spooled
    body, zraft.api.loads) are touched."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in [*folder.glob(f"{SCRATCH_PREFIX}*"), *folder.glob(f"{LOAD_PREFIX}*")]:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def new_scratch(folder: Path, suffix: str) -> Path:
    """A new empty scratch file in `folder` (an empty file is what VACUUM INTO requires)."""
    fd, name = tempfile.mkstemp(prefix=SCRATCH_PREFIX, suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


def remove_scratch(path: Path) -> None:
    """Remove a scratch database and any journal SQLite left beside it."""
    for name in (str(path), f"{path}-journal", f"{path}-wal", f"{path}-shm"):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass


def database_bytes(db_path: str) -> int:
    """An upper bound of what a copy of the database takes: the file plus its WAL."""
    return sum(_size(name) for name in (db_path, f"{db_path}-wal"))


def check_space(folder: Path, needed: int) -> None:
    """NoSpace unless `needed` bytes fit in `folder` with DISK_HEADROOM_BYTES to spare (the
    folder is made again should someone have removed it)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_HEADROOM_BYTES:
        raise NoSpace(f"not enough disk space in {folder}: {free} bytes free, the backup needs about "
                      f"{needed} and {DISK_HEADROOM_BYTES} must stay free for the database")


def copy_database(db_path: str, dest: Path, cancel: threading.Event) -> None:
    """A consistent copy of the database into the empty file `dest`, in rollback-journal
    mode and without zraft's table (binary and delete formats)."""
    with _full_disk_as_no_space(dest):
        source = _open_source(db_path)
        try:
            target = apsw.Connection(str(dest))
            try:
                target.execute("PRAGMA synchronous=OFF")  # a scratch file needs no durability
                _copy_pages(source, target, cancel)
                target.execute("PRAGMA journal_mode=DELETE")
                target.execute(f"DROP TABLE IF EXISTS {META_TABLE}")
            finally:
                target.close()
        finally:
            source.close()


def vacuum_copy(copy: Path, dest: Path, cancel: threading.Event) -> None:
    """VACUUM the copy into the empty file `dest`. VACUUM INTO writes the compacted database
    straight into `dest`, where a plain VACUUM would build it in the system's temporary
    folder (outside our disk check) and then rewrite the copy through a journal."""
    with _full_disk_as_no_space(dest):
        conn = apsw.Connection(str(copy))
        try:
            _watch(conn, cancel)
            conn.execute("VACUUM INTO ?", (str(dest),))
        except apsw.InterruptError:
            raise Cancelled() from None
        finally:
            conn.close()


def write_dump(db_path: str, dest: Path, tables: Sequence[str], cancel: threading.Event) -> None:
    """rqlite's SQL dump (fmt=sql) of the database into `dest`, one statement per line,
    written as it is read: `tables` limits it to those tables (empty: everything)."""
    with _full_disk_as_no_space(dest):
        conn = _open_source(db_path)
        try:
            _watch(conn, cancel)
            conn.execute("BEGIN")  # every query of the dump reads the same point in time
            with open(dest, "wb", buffering=WRITE_BUFFER_BYTES) as out:
                _write_lines(out, dump_lines(conn, tables), cancel)
        except apsw.InterruptError:
            raise Cancelled() from None
        finally:
            conn.close()


def dump_lines(conn: apsw.Connection, tables: Sequence[str]) -> Iterator[bytes]:
    """The dump's statements, each with its semicolon and without a newline. The shape is
    Python's and rqlite's (tables by name with their rows, then indexes, triggers and views,
    AUTOINCREMENT counters last) so that dumps compare with theirs; zraft's table is left
    out. With `tables`, only those tables and their indexes, triggers and counters are in
    (rqlite keeps every index, trigger and view, so that its partial dumps may not load)."""
    wanted = frozenset(tables)
    yield b"PRAGMA foreign_keys=OFF;"
    yield b"BEGIN TRANSACTION;"
    schema = list(conn.execute(
        "SELECT name, CAST(sql AS BLOB) FROM sqlite_schema WHERE sql NOT NULL AND type = 'table' "
        "AND name <> ? ORDER BY name", (META_TABLE,)))
    dumped: set[str] = set()
    writable_schema = False
    for name, sql in schema:
        if wanted and (name not in wanted or name.startswith("sqlite_")):
            continue
        if name == "sqlite_sequence" or (name.startswith("sqlite_") and name != "sqlite_stat1"):
            continue
        if name == "sqlite_stat1":
            yield b'ANALYZE "sqlite_master";'
        elif sql.upper().startswith(b"CREATE VIRTUAL TABLE"):
            if not writable_schema:
                writable_schema = True
                yield b"PRAGMA writable_schema=ON;"
            yield _virtual_table_entry(name, sql)
        else:
            yield sql + b";"
        dumped.add(name)
        yield from _insert_lines(conn, name)
    yield from _schema_objects(conn, wanted, dumped)
    if writable_schema:
        yield b"PRAGMA writable_schema=OFF;"
    yield from _sequence_lines(conn, dumped if wanted else None)
    yield b"COMMIT;"


def _insert_lines(conn: apsw.Connection, table: str) -> Iterator[bytes]:
    """One INSERT per row, rendered by SQLite's quote() and returned as bytes (statistics
    about zraft's table are left out with the table)."""
    ident = _quoted(table)
    columns = [str(row[1]) for row in conn.execute(f"PRAGMA table_info({ident})")]
    values = "||','||".join(f"quote({_quoted(c)})" for c in columns) or "''"
    prefix = f"INSERT INTO {ident} VALUES(".replace("'", "''")
    where = " WHERE tbl IS NOT ?" if table == "sqlite_stat1" else ""
    query = f"SELECT CAST('{prefix}'||{values}||');' AS BLOB) FROM {ident}{where}"
    for (line,) in conn.execute(query, (META_TABLE,) if where else ()):
        yield bytes(line)


def _schema_objects(conn: apsw.Connection, wanted: frozenset[str], dumped: set[str]) -> Iterator[bytes]:
    """Indexes, triggers and views in schema order; with a table filter, only the indexes
    and triggers of the tables dumped (a view may read any table, so none is kept)."""
    rows = conn.execute(
        "SELECT type, tbl_name, CAST(sql AS BLOB) FROM sqlite_schema WHERE sql NOT NULL "
        "AND type IN ('index', 'trigger', 'view') AND tbl_name <> ?", (META_TABLE,))
    for kind, table, sql in rows:
        if wanted and (kind == "view" or table not in dumped):
            continue
        yield bytes(sql) + b";"


def _sequence_lines(conn: apsw.Connection, only: set[str] | None) -> Iterator[bytes]:
    """AUTOINCREMENT counters (sqlite_sequence). A whole dump resets the table; a partial one
    sets the counters of its own tables only, leaving the others of a database it is loaded
    into alone."""
    exists = conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'").get
    if not exists:
        return
    rows = conn.execute("SELECT name, CAST(quote(name) AS BLOB), CAST(quote(seq) AS BLOB) FROM sqlite_sequence")
    if only is None:
        yield b'DELETE FROM "sqlite_sequence";'
    for name, quoted, seq in rows:
        if only is not None:
            if name not in only:
                continue
            yield b'DELETE FROM "sqlite_sequence" WHERE name = ' + bytes(quoted) + b";"
        yield b'INSERT INTO "sqlite_sequence" VALUES(' + bytes(quoted) + b"," + bytes(seq) + b");"


def _virtual_table_entry(name: str, sql: bytes) -> bytes:
    """A virtual table goes straight into the schema, as sqlite3's .dump does: creating it
    would also create its shadow tables, which the dump restores as ordinary tables."""
    quoted_name = name.replace("'", "''").encode()
    return (b"INSERT INTO sqlite_master(type,name,tbl_name,rootpage,sql)VALUES('table','" + quoted_name
            + b"','" + quoted_name + b"',0,'" + sql.replace(b"'", b"''") + b"');")


def _write_lines(out: BinaryIO, lines: Iterator[bytes], cancel: threading.Event) -> None:
    for count, line in enumerate(lines):
        if count % 1000 == 0 and cancel.is_set():
            raise Cancelled()
        out.write(line)
        out.write(b"\n")


def _copy_pages(source: apsw.Connection, target: apsw.Connection, cancel: threading.Event) -> None:
    """The online backup API in steps, all under one read transaction of the source."""
    source.execute("BEGIN")
    try:
        source.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()  # the read transaction starts here
        with target.backup("main", source, "main") as backup:
            while not backup.done:
                if cancel.is_set():
                    raise Cancelled()
                backup.step(COPY_STEP_PAGES)
    finally:
        source.execute("ROLLBACK")


def _open_source(db_path: str) -> apsw.Connection:
    """This node's database, read-only, reading in one transaction (see the module doc)."""
    conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    return conn


def _watch(conn: apsw.Connection, cancel: threading.Event) -> None:
    """Interrupt `conn`'s statements once `cancel` is set."""
    conn.set_progress_handler(cancel.is_set, PROGRESS_OPS)


@contextmanager
def _full_disk_as_no_space(dest: Path) -> Iterator[None]:
    """SQLITE_FULL or ENOSPC while writing `dest` becomes NoSpace."""
    try:
        yield
    except apsw.FullError as exc:
        raise NoSpace(f"disk full while writing the backup to {dest.parent}: {exc}") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise NoSpace(f"disk full while writing the backup to {dest.parent}: {exc}") from None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
