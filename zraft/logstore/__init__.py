"""Durable Raft log and hard state for one node (see DESIGN.md for format and recovery).

FileLogStore is the real thing; MemoryLogStore has the same contract for tests; LogStore
is the Protocol both satisfy.
"""

from zraft.logstore.base import LogStore
from zraft.logstore.errors import LogCompactedError, LogCorruptError, LogFailedError, LogStoreError
from zraft.logstore.file_store import DEFAULT_SEGMENT_SIZE, FileLogStore
from zraft.logstore.memory import MemoryLogStore

__all__ = [
    "DEFAULT_SEGMENT_SIZE", "FileLogStore", "LogCompactedError", "LogCorruptError", "LogFailedError",
    "LogStore", "LogStoreError", "MemoryLogStore",
]
