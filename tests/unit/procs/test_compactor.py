"""The Compactor's rules: by entries beyond the trailing margin, on an interval, and by bytes
(the core keeps its entries in memory, so big entries must not stay for a margin of 10,240)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from zraft.config import RaftSettings
from zraft.procs.shell import Counters
from zraft.procs.snapshots import Compactor
from zraft.raft import SnapshotMeta
from zraft.raft.types import Entry


@dataclass
class FakeLog:
    snapshot: SnapshotMeta
    entries: list[Entry]
    applied: int


@dataclass
class FakeCore:
    log: FakeLog
    compacted: list[int] = field(default_factory=list)

    def compact(self, point: int) -> SnapshotMeta:
        log = self.log
        meta = SnapshotMeta(index=point, term=1)
        log.entries = log.entries[point - log.snapshot.index:]
        log.snapshot = meta
        self.compacted.append(point)
        return meta


class FakeStore:
    def __init__(self) -> None:
        self.points: list[int] = []

    def compact(self, point: int, meta: SnapshotMeta) -> None:
        self.points.append(point)


def core_with(sizes: list[int], applied: int) -> FakeCore:
    entries = [Entry(index=i + 1, term=1, data=b"x" * size) for i, size in enumerate(sizes)]
    return FakeCore(FakeLog(SnapshotMeta(), entries, applied))


def compactor(**settings: int) -> Compactor:
    base = {"snapshot_threshold": 100, "trailing_logs": 50, "snapshot_interval_ms": 3_600_000,
            "snapshot_threshold_bytes": 1000}
    base.update(settings)
    return Compactor(RaftSettings(**base), Counters(logging.getLogger("test")))  # type: ignore[arg-type]


def test_small_entries_follow_the_entry_threshold_and_keep_the_whole_margin() -> None:
    c = compactor()
    core = core_with([1] * 140, applied=140)
    c.durable = 140
    assert c.maybe_compact(core, FakeStore(), now=1.0) is None  # 90 beyond a margin of 50: below 100 to go
    core = core_with([1] * 160, applied=160)
    c.durable = 160
    assert c.maybe_compact(core, FakeStore(), now=2.0) is not None
    assert core.compacted == [110]  # 50 entries kept


def test_big_entries_are_compacted_by_bytes_with_a_margin_of_half_the_threshold() -> None:
    c = compactor()
    core = core_with([100] * 20, applied=20)  # 2,000 bytes in 20 entries: over 1,000
    c.durable = 18  # only what the store made durable may go
    store = FakeStore()
    assert c.maybe_compact(core, store, now=1.0) is not None
    assert core.compacted == [13] and store.points == [13]  # 5 entries (500 bytes) kept below 18


def test_nothing_goes_by_bytes_beyond_what_the_store_made_durable() -> None:
    c = compactor()
    core = core_with([5000] * 4, applied=4)
    c.durable = 0
    assert c.maybe_compact(core, FakeStore(), now=1.0) is None
    c.durable = 3
    assert c.maybe_compact(core, FakeStore(), now=2.0) is not None
    assert core.compacted == [3]  # one entry is bigger than the whole margin: none kept


def test_below_the_byte_threshold_big_entries_wait_for_the_entry_rules() -> None:
    c = compactor()
    core = core_with([90] * 10, applied=10)  # 900 bytes
    c.durable = 10
    assert c.maybe_compact(core, FakeStore(), now=1.0) is None
