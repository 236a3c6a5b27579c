"""In-memory index of the log: where each live entry sits on disk, plus the log's state.

The same object is driven by replay at load time and by live writes afterwards, so the rules
for overwrites and snapshots exist exactly once. Positions are kept in typed arrays (8 bytes
per field) rather than per-entry objects because a log can hold millions of entries.

Replay may start at a segment whose predecessors were deleted by compaction; entries between
the checkpoint's snapshot and its last index are then unknown (`known_from` > first index)
until a later snapshot record covers them. Live operation never has such a hole.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import NamedTuple

from zraft.raft.types import HardState, SnapshotMeta


class LogOrderError(ValueError):
    """A record that cannot follow the log as replayed so far (gap, rewrite below the
    snapshot, snapshot disagreeing with the log); the caller decides if that is corruption
    (replay) or a caller bug (live write)."""


class Location(NamedTuple):
    seq: int
    offset: int
    size: int


class LogIndex:
    def __init__(self, hard: HardState, snap: SnapshotMeta, last_index: int) -> None:
        self.hard = hard
        self.snap = snap
        self.known_from = last_index + 1
        self.terms = array("q")
        self.seqs = array("q")
        self.offsets = array("q")
        self.sizes = array("q")
        self.conf_indexes: list[int] = []

    # -- positions -------------------------------------------------------------------------
    def first_index(self) -> int:
        return self.snap.index + 1

    def last_index(self) -> int:
        return self.known_from - 1 + len(self.terms)

    def complete(self) -> bool:
        """True when every entry after the snapshot is known (always so once loaded)."""
        return self.known_from == self.snap.index + 1

    def term(self, index: int) -> int | None:
        if index == self.snap.index:
            return self.snap.term
        if self.known_from <= index <= self.last_index():
            return self.terms[index - self.known_from]
        return None

    def location(self, index: int) -> Location:
        k = index - self.known_from
        return Location(self.seqs[k], self.offsets[k], self.sizes[k])

    # -- changes ---------------------------------------------------------------------------
    def append(self, index: int, term: int, is_conf: bool, where: Location) -> None:
        """Add one entry, first discarding any entry at or after `index` (Raft overwrite)."""
        if index <= self.snap.index:
            raise LogOrderError(f"entry {index} is at or below snapshot {self.snap.index}")
        if index > self.last_index() + 1:
            raise LogOrderError(f"gap: entry {index} after last index {self.last_index()}")
        if index < self.known_from:
            self._drop_from(0)
            self.known_from = index
        else:
            self.truncate_from(index)
        self.terms.append(term)
        self.seqs.append(where.seq)
        self.offsets.append(where.offset)
        self.sizes.append(where.size)
        if is_conf:
            self.conf_indexes.append(index)

    def append_batch(self, first: int, terms: Sequence[int], conf_indexes: Sequence[int], seq: int,
                     offsets: Sequence[int], sizes: Sequence[int]) -> None:
        """append() for a contiguous live batch, with the per-entry work done in bulk."""
        if not terms:
            return
        if not self.known_from <= first <= self.last_index() + 1 or first <= self.snap.index:
            raise LogOrderError(f"batch at {first} outside ({self.snap.index}, {self.last_index() + 1}]")
        self.truncate_from(first)
        self.terms.extend(terms)
        self.seqs.extend([seq] * len(terms))
        self.offsets.extend(offsets)
        self.sizes.extend(sizes)
        self.conf_indexes.extend(conf_indexes)

    def truncate_from(self, index: int) -> None:
        """Forget entries >= index (they stay on disk as dead records)."""
        if index <= self.last_index():
            self._drop_from(max(0, index - self.known_from))
        while self.conf_indexes and self.conf_indexes[-1] >= index:
            self.conf_indexes.pop()

    def install_snapshot(self, meta: SnapshotMeta, keep: bool) -> None:
        """Move the log start to `meta`, keeping the suffix after it or emptying the log."""
        if meta.index < self.snap.index:
            raise LogOrderError(f"snapshot {meta.index} older than current {self.snap.index}")
        if keep:
            self._check_keep(meta)
            self._drop_before(meta.index + 1)
        else:
            self._drop_from(0)
            self.known_from = meta.index + 1
            self.conf_indexes.clear()
        self.snap = meta

    def _check_keep(self, meta: SnapshotMeta) -> None:
        if meta.index > self.last_index():
            raise LogOrderError(f"snapshot {meta.index} keeps a suffix beyond last index {self.last_index()}")
        term = self.term(meta.index)
        if term is not None and term != meta.term:
            raise LogOrderError(f"snapshot term {meta.term} at {meta.index} but log has term {term}")

    def _drop_before(self, index: int) -> None:
        count = min(index - self.known_from, len(self.terms))
        if count > 0:
            for arr in (self.terms, self.seqs, self.offsets, self.sizes):
                del arr[:count]
            self.known_from += count
        self.conf_indexes = [i for i in self.conf_indexes if i >= index]

    def _drop_from(self, k: int) -> None:
        for arr in (self.terms, self.seqs, self.offsets, self.sizes):
            del arr[k:]
