"""SQLite authorizer that refuses user statements which would break replication.

Every node must reach the same database from the same log. A few statements would make a
node's result depend on something other than the log, or would tear the store's own
transaction scheme, so they are refused at prepare time (SQLite calls the authorizer while
compiling a statement, including the bodies of triggers it fires):

- BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE: the store wraps each batch of entries in one
  transaction with a savepoint per entry; a user COMMIT would commit half a batch and the
  applied index with it. Use the command's ``transaction`` flag instead.
- ATTACH/DETACH: file paths are per node (rqlite calls this undefined behaviour).
- TEMP tables/views/triggers/indexes: they live in the connection, not in the file, so a
  restarted or restored node would lose them and then diverge.
- PRAGMAs that change connection state (foreign_keys, recursive_triggers, ...) for the same
  reason, plus the ones rqlite rejects (journal_mode, synchronous, wal_checkpoint, ...).
  ``PRAGMA optimize`` is refused because what it does depends on the connection's history.
- Writes to ``_zraft_meta``, the table that holds the applied index.

The store's own statements run with ``internal`` set and are never cached, so a user
statement can never reuse a statement that was compiled without these checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from zraft.store.meta import META_TABLE

DISALLOWED_PRAGMA = "disallowed pragma"
"""rqlite's request-level error text, reused for the per-statement refusal."""

SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"})
_LISTING_PRAGMAS = frozenset({"table_list", "table_info", "table_xinfo", "index_list"})

_ALWAYS_DENIED_PRAGMAS = frozenset({"wal_checkpoint", "optimize"})
_SETTING_DENIED_PRAGMAS = frozenset(
    {
        "journal_mode", "wal_autocheckpoint", "synchronous", "query_only", "locking_mode",
        "foreign_keys", "defer_foreign_keys", "recursive_triggers", "reverse_unordered_selects",
        "case_sensitive_like", "ignore_check_constraints", "legacy_alter_table", "trusted_schema",
        "writable_schema", "automatic_index", "analysis_limit", "count_changes", "full_column_names",
        "short_column_names", "empty_result_callbacks", "read_uncommitted", "temp_store",
        "temp_store_directory", "data_store_directory", "hard_heap_limit", "soft_heap_limit",
        "cell_size_check", "legacy_file_format",
    }
)  # fmt: skip
_TEMP_CREATES = frozenset(
    {apsw.SQLITE_CREATE_TEMP_TABLE, apsw.SQLITE_CREATE_TEMP_INDEX, apsw.SQLITE_CREATE_TEMP_TRIGGER,
     apsw.SQLITE_CREATE_TEMP_VIEW}
)  # fmt: skip
_META_WRITES = frozenset(
    {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE, apsw.SQLITE_DROP_TABLE,
     apsw.SQLITE_ALTER_TABLE, apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_CREATE_INDEX}
)  # fmt: skip


class Guard:
    """Authorizer callable for one connection; remembers why it last refused something."""

    def __init__(self) -> None:
        self.internal = False
        self.reason: str | None = None
        self.schema_read = False
        """Set when a user statement reads the schema table or lists tables (see execute.py)."""

    def __call__(self, op: int, p1: str | None, p2: str | None, db: str | None, trigger: str | None) -> int:
        if self.internal:
            return apsw.SQLITE_OK
        if (op == apsw.SQLITE_READ and (p1 or "").lower() in SCHEMA_TABLES) or (
                op == apsw.SQLITE_PRAGMA and (p1 or "").lower() in _LISTING_PRAGMAS):
            self.schema_read = True
        reason = refusal(op, p1, p2)
        if reason is None:
            return apsw.SQLITE_OK
        self.reason = reason
        return apsw.SQLITE_DENY

    @contextmanager
    def trusted(self) -> Iterator[None]:
        """Let the store's own statements through while the block runs."""
        self.internal = True
        try:
            yield
        finally:
            self.internal = False

    def explain(self, exc: apsw.AuthError) -> str:
        """Message for an AuthError: our reason if we refused, else SQLite's own text."""
        reason, self.reason = self.reason, None
        return reason or str(exc)


def refusal(op: int, p1: str | None, p2: str | None) -> str | None:
    """Why a user statement may not perform action ``op``, or None if it may."""
    if op in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
        return "transaction control statements are not supported; use the transaction option"
    if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
        return "ATTACH and DETACH are not supported"
    if op in _TEMP_CREATES:
        return "temporary tables, views, triggers and indexes are not supported"
    if op == apsw.SQLITE_PRAGMA:
        return _pragma_refusal((p1 or "").lower(), p2)
    if op in _META_WRITES and META_TABLE in ((p1 or "").lower(), (p2 or "").lower()):
        return f"table {META_TABLE} is reserved"
    return None


def _pragma_refusal(name: str, argument: str | None) -> str | None:
    if name in _ALWAYS_DENIED_PRAGMAS:
        return DISALLOWED_PRAGMA
    if argument is not None and name in _SETTING_DENIED_PRAGMAS:
        return DISALLOWED_PRAGMA
    return None
