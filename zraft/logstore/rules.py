"""Argument rules shared by every LogStore implementation, so the file store and the
in-memory model reject exactly the same calls (the model tests depend on it)."""

from __future__ import annotations

from collections.abc import Sequence

from zraft.logstore.errors import LogCompactedError
from zraft.raft.types import Entry


def check_append(snap_index: int, last_index: int, entries: Sequence[Entry]) -> None:
    """A batch must be contiguous and start inside (snapshot, last + 1]."""
    if not entries:
        return
    first = entries[0].index
    if first <= snap_index:
        raise ValueError(f"cannot write entry {first}: at or below snapshot index {snap_index}")
    if first > last_index + 1:
        raise ValueError(f"gap: first entry {first} after last index {last_index}")
    for k, entry in enumerate(entries):
        if entry.index != first + k:
            raise ValueError(f"batch not contiguous: entry {entry.index} at position {k} after {first}")


def check_range(first_index: int, last_index: int, lo: int, hi: int) -> None:
    """Entries [lo, hi) must lie within the log; compaction gets its own error so callers
    can fall back to sending a snapshot."""
    if lo > hi:
        raise ValueError(f"empty range: lo {lo} > hi {hi}")
    if lo < first_index:
        raise LogCompactedError(f"entry {lo} compacted; log starts at {first_index}")
    if hi > last_index + 1:
        raise ValueError(f"range up to {hi - 1} beyond last index {last_index}")


def check_compact(index: int, last_index: int) -> None:
    if index > last_index:
        raise ValueError(f"cannot compact to {index}: beyond last index {last_index}")
