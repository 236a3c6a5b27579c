"""SQLite authorizer that refuses user statements which would break replication.

Every node must reach the same database from the same log. A few statements would make a
node's result depend on something other than the log, or would tear the store's own
transaction scheme, so they are refused at prepare time (SQLite calls the authorizer while
compiling a statement, including the bodies of triggers it fires). User statements on the
writer are never taken from the statement cache, so every execution is checked afresh.

Refused everywhere:
- BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE: the store wraps each batch of entries in one
  transaction with a savepoint per entry; a user COMMIT would commit half a batch and the
  applied index with it. Use the command's ``transaction`` flag instead.
- ATTACH/DETACH: file paths are per node (rqlite calls this undefined behaviour).
- The temp schema, however it is spelled (``CREATE TEMP TABLE``, ``CREATE TABLE temp.t``,
  ``CREATE TRIGGER temp.x``, ``INSERT INTO temp.t``, ``PRAGMA temp.user_version=1``): it
  lives in the connection, not in the file, so a restarted or restored node would lose it,
  and a temp object shadows the main one of the same name. The authorizer's database-name
  argument tells, whatever the spelling.
- PRAGMAs that set something, except: the ones that only name a table or index
  (``table_info(t)``…), the two that live in the replicated file header (``user_version``,
  ``application_id``), and connection settings given the very value zraft keeps on every
  node (``FIXED_SETTINGS``: ``PRAGMA legacy_alter_table=OFF``, as ORMs send on connect, is
  accepted and changes nothing; ``PRAGMA recursive_triggers=ON`` is refused). Refused with
  it: ``max_page_count`` (one client could make every store report "disk full"),
  ``cache_size``, ``threads`` (the sorter's merge pattern, and with it the order of equal
  keys, depends on them), ``page_size``, ``mmap_size``, ``auto_vacuum``, ``journal_mode``,
  ``synchronous``, ``wal_checkpoint``, ``optimize`` (its work depends on the connection's
  history)... ``PRAGMA foreign_keys=ON|OFF`` is replicated: the applier handles it when it
  is a statement of its own (apply.py); any other spelling is refused here.
- Writes to ``_zraft_meta``, the table that holds the applied index.

Refused in the statements of a *write* entry on the writer (``write_entry``), because they
show facts of one node's file or connection, which would then flow into the data:
- ``PRAGMA``s and ``pragma_*()`` table-valued functions in ``PER_NODE_PRAGMAS``
  (``database_list`` shows the file's path, ``page_count``, ``freelist_count``,
  ``data_version``…), the ``dbstat`` virtual table, and ``total_changes()`` (it counts
  since the connection opened: a restarted node starts again from 0).
- Virtual tables built on ``dbstat`` are refused in every entry.

The store's own statements run with ``internal`` set; they are cached, but a user statement
never takes a statement from the cache, so it can never reuse one compiled unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from zraft.store.meta import META_TABLE

DISALLOWED_PRAGMA = "disallowed pragma"
"""rqlite's request-level error text, reused for the per-statement refusal."""
TEMP_REFUSED = "temporary tables, views, triggers and indexes are not supported"

SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"})
_LISTING_PRAGMAS = frozenset({"table_list", "table_info", "table_xinfo", "index_list"})

_ALWAYS_DENIED_PRAGMAS = frozenset({"wal_checkpoint", "optimize"})
_RQLITE_DENIED_PRAGMAS = frozenset({"journal_mode", "wal_autocheckpoint", "synchronous"})
"""Refused by rqlite itself (and by the api before the log); same text here."""
_NAME_ARGUMENT_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "index_info", "index_xinfo", "index_list", "foreign_key_list",
     "foreign_key_check", "integrity_check", "quick_check", "table_list", "incremental_vacuum"}
)  # fmt: skip
"""Pragmas whose argument names a table, an index or a count: they set nothing."""
_REPLICATED_PRAGMAS = frozenset({"user_version", "application_id"})
"""Settings kept in the database file's header, so replicated with it."""
PER_NODE_PRAGMAS = frozenset(
    {"database_list", "page_count", "freelist_count", "data_version", "stats", "integrity_check",
     "quick_check", "cell_size_check", "lock_status", "shrink_memory", "soft_heap_limit",
     "hard_heap_limit", "temp_store_directory", "data_store_directory"}
)  # fmt: skip
"""Pragmas (and ``pragma_*`` functions) that show or touch facts of one node's file or process."""
PER_NODE_FUNCTIONS = frozenset({"total_changes"})
PER_NODE_TABLES = frozenset({"dbstat"})

_ON, _OFF = ("ON", 1), ("OFF", 0)
FIXED_SETTINGS: dict[str, tuple[str, int]] = {
    # name: (shown, value). The writer sets each of these at open; a user statement may only
    # repeat the value (ORMs send some on connect), never change it.
    "recursive_triggers": _OFF, "reverse_unordered_selects": _OFF, "legacy_alter_table": _OFF,
    "ignore_check_constraints": _OFF, "case_sensitive_like": _OFF, "defer_foreign_keys": _OFF,
    "query_only": _OFF, "writable_schema": _OFF, "cell_size_check": _OFF, "trusted_schema": _ON,
    "automatic_index": _ON, "full_column_names": _OFF, "short_column_names": _ON,
    "empty_result_callbacks": _OFF, "read_uncommitted": _OFF, "count_changes": _OFF,
    "secure_delete": _OFF, "cache_size": ("-2000", -2000), "page_size": ("4096", 4096),
    "max_page_count": ("4294967294", 4294967294), "mmap_size": ("0", 0), "threads": ("0", 0),
    "busy_timeout": ("5000", 5000), "journal_size_limit": ("-1", -1), "analysis_limit": ("0", 0),
    "auto_vacuum": ("NONE", 0), "temp_store": ("DEFAULT", 0),
}  # fmt: skip
_BOOLEAN_SETTINGS = frozenset(name for name, (shown, _) in FIXED_SETTINGS.items() if shown in ("ON", "OFF"))
_NAMED_VALUES = {
    "auto_vacuum": {"none": 0, "full": 1, "incremental": 2},
    "temp_store": {"default": 0, "file": 1, "memory": 2},
    "secure_delete": {"fast": 2},
}
_INTEGER = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|\d+)")

_TEMP_DB = "temp"
_READ, _SELECT = apsw.SQLITE_READ, apsw.SQLITE_SELECT
_DML = frozenset({apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE})
_DML_CHECKED = frozenset({META_TABLE, "sqlite_sequence"})
"""Tables whose writes the slow path looks at (refused, or noted for the writer)."""
_TEMP_READS = frozenset({apsw.SQLITE_READ, apsw.SQLITE_SELECT, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE})
_TEMP_CREATES = frozenset(
    {apsw.SQLITE_CREATE_TEMP_TABLE, apsw.SQLITE_CREATE_TEMP_INDEX, apsw.SQLITE_CREATE_TEMP_TRIGGER,
     apsw.SQLITE_CREATE_TEMP_VIEW}
)  # fmt: skip
_META_WRITES = frozenset(
    {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE, apsw.SQLITE_DROP_TABLE,
     apsw.SQLITE_ALTER_TABLE, apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_CREATE_INDEX}
)  # fmt: skip
FOREIGN_KEYS_ALONE = ("PRAGMA foreign_keys must be a statement of its own, such as PRAGMA foreign_keys=ON; "
                      "zraft replicates the setting and applies it from the next entry on")


class Guard:
    """Authorizer callable for one connection; remembers why it last refused something.

    ``Guard()`` is the readers' guard; the store's writer uses ``Guard(writer=True)``, whose
    applier sets ``write_entry`` while the statements of a write entry compile, and reads
    ``created_tables`` (tables created by the statement) and ``sequence_written`` after each.
    """

    def __init__(self, *, writer: bool = False) -> None:
        self.internal = False
        self.reason: str | None = None
        self.schema_read = False
        """Set when a user statement reads the schema table or lists tables (see execute.py)."""
        self.writer = writer
        self.write_entry = False
        """The statement being compiled belongs to a write entry (writer only)."""
        self.created_tables: list[str] = []
        self.sequence_written = False

    def __call__(self, op: int, p1: str | None, p2: str | None, db: str | None, trigger: str | None) -> int:
        if self.internal:
            return apsw.SQLITE_OK
        if op == _READ:  # the most frequent call by far (one per column read): decided here
            table = (p1 or "").lower()
            if table in SCHEMA_TABLES:
                self.schema_read = True
            elif self.write_entry and table in PER_NODE_TABLES:
                self.reason = f"{table} shows facts of this node's file; it cannot be used in a write"
                return apsw.SQLITE_DENY
            return apsw.SQLITE_OK
        if op == _SELECT:
            return apsw.SQLITE_OK
        if op in _DML and db == "main" and (p1 or "").lower() not in _DML_CHECKED:
            return apsw.SQLITE_OK  # a plain INSERT/UPDATE/DELETE of a user table
        if op == apsw.SQLITE_PRAGMA and (p1 or "").lower() in _LISTING_PRAGMAS:
            self.schema_read = True
        reason = refusal(op, p1, p2, db, writer=self.writer, write_entry=self.write_entry)
        if reason is None:
            if self.writer:
                self._note(op, p1, db)
            return apsw.SQLITE_OK
        self.reason = reason
        return apsw.SQLITE_DENY

    def _note(self, op: int, p1: str | None, db: str | None) -> None:
        if op == apsw.SQLITE_CREATE_TABLE and p1 and (db or "main") == "main":
            self.created_tables.append(p1)
        elif op in (apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE) and (p1 or "").lower() == "sqlite_sequence":
            self.sequence_written = True

    def statement_starts(self) -> None:
        """Forget what the previous user statement created, wrote or was refused."""
        self.created_tables = []
        self.sequence_written = False
        self.reason = None

    @contextmanager
    def trusted(self) -> Iterator[None]:
        """Let the store's own statements through while the block runs."""
        self.internal = True
        try:
            yield
        finally:
            self.internal = False

    def explain(self, exc: apsw.Error) -> str:
        """Message for an error while compiling: our reason if we refused, else SQLite's own text."""
        reason, self.reason = self.reason, None
        return reason or str(exc)


def refusal(op: int, p1: str | None, p2: str | None, db: str | None = None, *, writer: bool = False,
            write_entry: bool = False) -> str | None:
    """Why a user statement may not perform action ``op``, or None if it may.

    ``writer``: compiled on the store's writer; ``write_entry``: for a write entry there.
    """
    if op in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
        return "transaction control statements are not supported; use the transaction option"
    if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
        return "ATTACH and DETACH are not supported"
    if op in _TEMP_CREATES or ((db or "").lower() == _TEMP_DB and op not in _TEMP_READS
                               and not (op == apsw.SQLITE_PRAGMA and p2 is None)):
        return TEMP_REFUSED
    if op == apsw.SQLITE_PRAGMA:
        return _pragma_refusal((p1 or "").lower(), p2, writer=writer, write_entry=write_entry)
    if op in _META_WRITES and META_TABLE in ((p1 or "").lower(), (p2 or "").lower()):
        return f"table {META_TABLE} is reserved"
    if write_entry:
        if op == apsw.SQLITE_FUNCTION and (p2 or "").lower() in PER_NODE_FUNCTIONS:
            return f"{(p2 or '').lower()}() counts this node's connection since it opened; it cannot be used in a write"
        if op == apsw.SQLITE_READ and (p1 or "").lower() in PER_NODE_TABLES:
            return f"{(p1 or '').lower()} shows facts of this node's file; it cannot be used in a write"
    if op == apsw.SQLITE_CREATE_VTABLE and (p2 or "").lower() in PER_NODE_TABLES:
        return f"virtual tables using {(p2 or '').lower()} show facts of each node's file and are not supported"
    return None


def _pragma_refusal(name: str, argument: str | None, *, writer: bool, write_entry: bool) -> str | None:
    if name in _ALWAYS_DENIED_PRAGMAS:
        return DISALLOWED_PRAGMA
    if write_entry and name in PER_NODE_PRAGMAS:
        return f"PRAGMA {name} shows facts of this node's file or process; it cannot be used in a write"
    if argument is None or name in _NAME_ARGUMENT_PRAGMAS or name in _REPLICATED_PRAGMAS:
        return None
    if name == "foreign_keys":
        return FOREIGN_KEYS_ALONE if writer and write_entry else DISALLOWED_PRAGMA
    if name in _RQLITE_DENIED_PRAGMAS:
        return DISALLOWED_PRAGMA
    fixed = FIXED_SETTINGS.get(name)
    if fixed is None:
        return f"{DISALLOWED_PRAGMA}: {name} cannot be set through zraft"
    shown, value = fixed
    if setting_value(name, argument) == value:
        return None  # the value zraft keeps anyway: accepted, changes nothing
    return f"{DISALLOWED_PRAGMA}: zraft keeps {name} at {shown} on every node"


def setting_value(name: str, argument: str) -> int | None:
    """The value SQLite would give pragma ``name`` for ``argument`` (None: not a number)."""
    text = argument.strip()
    named = _NAMED_VALUES.get(name, {}).get(text.lower())
    if named is not None:
        return named
    if name in _BOOLEAN_SETTINGS or name == "secure_delete":
        return sqlite_boolean(text)
    if _INTEGER.fullmatch(text):
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        return sign * int(digits, 16 if digits[:2].lower() == "0x" else 10)
    return None


def sqlite_boolean(text: str) -> int:
    """SQLite's ``sqlite3GetBoolean(z, 0)``: a leading digit is read as a (truncated) number,
    on/yes/true are 1, anything else is 0."""
    if text[:1].isdigit():
        digits = re.match(r"\d+", text)
        return int(bool(int(digits.group(0)) & 0xFF)) if digits else 0
    return int(text.lower() in ("on", "yes", "true"))
