"""Exceptions of the log store.

They are separate from ValueError on purpose: a caller that passes a bad argument has a bug,
while a LogCorruptError means the disk no longer holds what we wrote and the node must stop
rather than serve (or vote with) wrong data.
"""

from __future__ import annotations

import os


class LogStoreError(Exception):
    """Base class of every error the log store raises on its own behalf."""


class LogCorruptError(LogStoreError):
    """Stored data is damaged in a way that cannot be a torn (unacknowledged) write.

    Carries the file and byte offset so an operator can inspect the damage by hand.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.path}: offset {offset}: {reason}")


class LogCompactedError(LogStoreError):
    """The requested entries were dropped by a snapshot; the caller must send a snapshot."""


class LogFailedError(LogStoreError):
    """An earlier write or fsync failed; what reached the disk is unknown, so the store
    refuses further work until it is reopened and recovered."""
