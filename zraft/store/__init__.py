"""SQLite state machine of a zraft node: replicated commands, apply, query, snapshots.

Public surface:
- ``Command``/``Statement`` and ``encode_command``/``decode_command``: the log-entry payload
  (``Command.stamped`` for a deterministic entry: its proposer's clock, a seed, a step budget);
- ``Database``: apply committed entries, answer reads, take and restore snapshots;
- ``ApplyResult``/``render``: per-statement results in rqlite's JSON shapes;
- ``zraft.store.reads``: read-only access for any process of the node (guarded read-only
  connections, and the one read/write classifier).
"""

from __future__ import annotations

from zraft.store.apply import ApplyResult
from zraft.store.command import (
    COMMAND_VERSION,
    Command,
    CommandError,
    Statement,
    UnsupportedCommandVersion,
    decode_command,
    encode_command,
)
from zraft.store.db import Database, NewerCommand, StoreError
from zraft.store.results import render

__all__ = [
    "COMMAND_VERSION",
    "ApplyResult",
    "Command",
    "CommandError",
    "Database",
    "NewerCommand",
    "Statement",
    "StoreError",
    "UnsupportedCommandVersion",
    "decode_command",
    "encode_command",
    "render",
]
