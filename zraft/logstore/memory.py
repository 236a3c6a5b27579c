"""MemoryLogStore: the LogStore contract with no disk, for tests and simulations.

It is also the reference model the file store is checked against, so it is written for
obviousness (a plain list) rather than speed, and shares the argument rules in rules.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from zraft.logstore import rules
from zraft.raft.types import ConfState, Entry, EntryKind, HardState, InitialState, SnapshotMeta


class MemoryLogStore:
    def __init__(self, hard_state: HardState | None = None, snapshot: SnapshotMeta | None = None) -> None:
        self._hard = hard_state or HardState()
        self._snap = snapshot or SnapshotMeta()
        self._entries: list[Entry] = []

    def load(self) -> InitialState:
        return InitialState(hard_state=self._hard, snapshot=self._snap, entries=tuple(self._entries))

    def reopen(self) -> None:
        """Nothing can fail in memory, so there is nothing to drop."""

    def close(self) -> None:
        """Nothing to release; the contents survive so a test can "reopen" the same object."""

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool) -> None:
        rules.check_append(self._snap.index, self.last_index(), entries)
        if entries:
            del self._entries[entries[0].index - self._snap.index - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard = hard_state

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        if meta.index < self._snap.index or meta == self._snap:
            return
        if self.term(meta.index) == meta.term:
            del self._entries[: meta.index - self._snap.index]
        else:
            self._entries = []
        self._snap = meta

    def compact(self, index: int, meta: SnapshotMeta | None = None) -> SnapshotMeta:
        if index <= self._snap.index:
            return self._snap
        rules.check_compact(index, self.last_index())
        term = self.term(index)
        assert term is not None
        if meta is None:
            meta = SnapshotMeta(index, term, self._conf_at(index))
        elif (meta.index, meta.term) != (index, term):
            raise ValueError(f"snapshot meta {meta} does not match entry {index} of term {term}")
        self.apply_snapshot(meta)
        return meta

    def entries(self, lo: int, hi: int) -> list[Entry]:
        rules.check_range(self.first_index(), self.last_index(), lo, hi)
        base = self._snap.index + 1
        return self._entries[lo - base : hi - base]

    def term(self, index: int) -> int | None:
        if index == self._snap.index:
            return self._snap.term
        if self._snap.index < index <= self.last_index():
            return self._entries[index - self._snap.index - 1].term
        return None

    def first_index(self) -> int:
        return self._snap.index + 1

    def last_index(self) -> int:
        return self._snap.index + len(self._entries)

    def hard_state(self) -> HardState:
        return self._hard

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snap

    def _conf_at(self, index: int) -> ConfState:
        for entry in reversed(self.entries(self.first_index(), index + 1)):
            if entry.kind == EntryKind.CONF:
                return ConfState.decode(entry.data)
        return self._snap.conf
