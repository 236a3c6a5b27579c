"""The core's view of the Raft log: a snapshot point followed by in-memory entries.

Rules of this module:
- entries[k].index == snapshot.index + 1 + k, always;
- `stable` is the last index known durable; entries after it are the next Ready's writes;
- `committed` never decreases, and nothing at or below it is ever truncated;
- `applied` <= min(committed, stable): only durable, committed entries reach the state machine.
"""

from __future__ import annotations

from zraft.raft.types import ConfState, Entry, EntryKind, SnapshotMeta


class LogInvariantError(Exception):
    """A rule of Raft was broken by a caller or a peer; the node must stop, not guess."""


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta, entries: tuple[Entry, ...], commit: int, applied: int) -> None:
        self.snapshot = snapshot
        self.entries: list[Entry] = list(entries)
        self.stable = self.last_index()
        self.committed = max(commit, snapshot.index)
        self.applied = max(applied, snapshot.index)
        self.pending_snapshot: SnapshotMeta | None = None
        self.conf_indexes: list[int] = [e.index for e in self.entries if e.kind == EntryKind.CONF]

    # -- positions -------------------------------------------------------------------------
    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term at `index`, or None when it is compacted away or beyond the end."""
        offset = index - self.snapshot.index
        if offset == 0:
            return self.snapshot.term
        if 0 < offset <= len(self.entries):
            return self.entries[offset - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.index - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log is at least as up-to-date if its last term is higher, or equal with
        an index at least as large."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    # -- reading ---------------------------------------------------------------------------
    def slice(self, lo: int, hi: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries [lo, hi), cut once max_bytes is exceeded (but never empty if lo < hi)."""
        start = lo - self.snapshot.index - 1
        stop = hi - self.snapshot.index - 1
        out: list[Entry] = []
        size = 0
        for entry in self.entries[start:stop]:
            size += entry.size()
            if out and size > max_bytes:
                break
            out.append(entry)
        return tuple(out)

    def unstable_entries(self) -> tuple[Entry, ...]:
        return tuple(self.entries[self.stable - self.snapshot.index:])

    def applicable_hi(self) -> int:
        """The last index the state machine may apply now."""
        return min(self.committed, self.stable)

    def next_committed(self, hi: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries (applied, hi] for the state machine, none while a snapshot is pending."""
        if self.pending_snapshot is not None or hi <= self.applied:
            return ()
        return self.slice(self.applied + 1, hi + 1, max_bytes)

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (index, term) at or before `index` whose term is <= `term`: where a
        leader should probe next after a rejection (fast back-off)."""
        index = min(index, self.last_index())
        while index > self.snapshot.index:
            entry_term = self.entry(index).term
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return self.snapshot.index, self.snapshot.term

    def conf_at(self, index: int) -> ConfState:
        """The configuration in force at `index`: the latest CONF entry at or before it."""
        for conf_index in reversed(self.conf_indexes):
            if conf_index <= index:
                return ConfState.decode(self.entry(conf_index).data)
        return self.snapshot.conf

    def latest_conf(self) -> ConfState:
        return self.conf_at(self.last_index())

    # -- writing ---------------------------------------------------------------------------
    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append entries, first truncating any existing suffix from entries[0].index."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogInvariantError(f"truncation at {first} would erase committed entry {self.committed}")
        if first > self.last_index() + 1:
            raise LogInvariantError(f"gap: appending {first} after {self.last_index()}")
        self._truncate_from(first)
        for entry in entries:
            self.entries.append(entry)
            if entry.kind == EntryKind.CONF:
                self.conf_indexes.append(entry.index)

    def _truncate_from(self, index: int) -> None:
        if index > self.last_index():
            return
        del self.entries[index - self.snapshot.index - 1:]
        self.stable = min(self.stable, index - 1)
        while self.conf_indexes and self.conf_indexes[-1] >= index:
            self.conf_indexes.pop()

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        for entry in entries:
            if self.term(entry.index) != entry.term:
                return entry.index
        return 0

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise LogInvariantError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` are durable, unless the log changed under the write."""
        if self.term(index) == term and index > self.stable:
            self.stable = index

    def applied_to(self, index: int) -> None:
        if index > self.last_index() or index < self.applied:
            raise LogInvariantError(f"applied {index} outside [{self.applied}, {self.last_index()}]")
        self.applied = index

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.snapshot = snapshot
        self.entries = []
        self.conf_indexes = []
        self.committed = snapshot.index
        self.stable = snapshot.index
        self.pending_snapshot = snapshot

    def snapshot_installed(self, snapshot: SnapshotMeta) -> None:
        if self.pending_snapshot == snapshot:
            self.pending_snapshot = None
            self.applied = max(self.applied, snapshot.index)

    def compact(self, index: int) -> SnapshotMeta:
        """Drop entries up to `index`, which the state machine has captured in a snapshot."""
        if index <= self.snapshot.index:
            return self.snapshot
        if index > self.applied:
            raise LogInvariantError(f"compact {index} beyond applied {self.applied}")
        term = self.term(index)
        assert term is not None
        meta = SnapshotMeta(index=index, term=term, conf=self.conf_at(index))
        del self.entries[: index - self.snapshot.index]
        self.conf_indexes = [i for i in self.conf_indexes if i > index]
        self.snapshot = meta
        return meta
