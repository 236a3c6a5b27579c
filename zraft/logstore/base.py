"""The interface every log store offers to the raft process.

A Protocol rather than a base class: the file store and the in-memory store share no code,
and tests want to check structurally that both fit what the shell calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from zraft.raft.types import Entry, HardState, InitialState, SnapshotMeta


@runtime_checkable
class LogStore(Protocol):
    """Durable Raft log + hard state, owned by one thread.

    Positions: entries first_index()..last_index() are readable; first_index() is always
    snapshot_meta().index + 1 (the log is empty when last_index() == snapshot index).
    """

    def load(self) -> InitialState:
        """Recover (on first call) and return hard state, snapshot point and every entry
        after it; `applied` is always 0 (the state machine knows its own)."""
        ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool) -> None:
        """Append `entries` (first overwriting the suffix from entries[0].index) and record
        `hard_state`; with sync=True both are on stable storage when this returns."""
        ...

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Durably move the log start past `meta`: entries after it are kept only if the log
        holds meta.index with meta.term; otherwise the log becomes empty at meta.index.
        A snapshot older than the current one is ignored."""
        ...

    def compact(self, index: int, meta: SnapshotMeta | None = None) -> SnapshotMeta:
        """Durably drop entries up to `index` (which must be in the log), recording `meta`
        (or one derived from the log: the term and configuration at `index`) as the new
        snapshot point. Returns the snapshot meta now in force."""
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi; LogCompactedError if lo < first_index()."""
        ...

    def term(self, index: int) -> int | None:
        """Term at `index` (the snapshot's term at its index); None outside the log."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def hard_state(self) -> HardState: ...

    def snapshot_meta(self) -> SnapshotMeta: ...

    def reopen(self) -> None:
        """After a failed write: drop whatever is not known durable and forget the failure;
        the next call recovers from stable storage as a restart would."""
        ...

    def close(self) -> None: ...
