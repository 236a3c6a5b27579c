"""FileLogStore and MemoryLogStore behaviour: round trips, overwrites, snapshots,
compaction, rollover, argument checks and the write pattern (group commit)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zraft.logstore import (
    FileLogStore,
    LogCompactedError,
    LogFailedError,
    LogStore,
    LogStoreError,
    MemoryLogStore,
    fsutil,
)
from zraft.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta


def ents(lo: int, hi: int, term: int, size: int = 20) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi)]


def reopen(store: FileLogStore, path: Path, **kw: int) -> FileLogStore:
    store.close()
    fresh = FileLogStore(path, **kw)  # type: ignore[arg-type]
    fresh.load()
    return fresh


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.suffix == ".seg")


def spy(calls: list[str], name: str, real: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A stand-in for a system call that records that it was called."""
    def wrapper(*args: Any) -> Any:
        calls.append(name)
        return None if real is None else real(*args)
    return wrapper


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LogStore:
    if request.param == "memory":
        return MemoryLogStore()
    s = FileLogStore(tmp_path / "log", segment_size=512)
    s.load()
    return s


def test_both_stores_satisfy_protocol(tmp_path: Path) -> None:
    assert isinstance(FileLogStore(tmp_path), LogStore)
    assert isinstance(MemoryLogStore(), LogStore)


def test_fresh_store_is_empty(tmp_path: Path) -> None:
    state = FileLogStore(tmp_path / "new" / "dir").load()
    assert state.entries == () and state.hard_state == HardState()
    assert state.snapshot == SnapshotMeta() and state.applied == 0


def test_round_trip_binary_entries_hard_state_snapshot(tmp_path: Path) -> None:
    conf = ConfState(voters=(1, 2, 3), learners=(4,))
    weird = [b"", b"\x00" * 7, bytes(range(256)), b"\xff\xfe{\"json\":1}\n", os.urandom(3000)]
    s = FileLogStore(tmp_path, segment_size=1024)
    s.load()
    s.apply_snapshot(SnapshotMeta(index=10, term=3, conf=conf))
    batch = [Entry(4, 11 + k, EntryKind.NORMAL, d) for k, d in enumerate(weird)]
    batch.append(Entry(4, 16, EntryKind.CONF, ConfState(voters=(1, 2)).encode()))
    s.save(HardState(term=4, vote=2, commit=12), batch, sync=True)
    s.save(None, ents(17, 40, term=5), sync=False)  # unsynced, but close/reopen keeps it
    s = reopen(s, tmp_path, segment_size=1024)
    state = s.load()
    assert state.hard_state == HardState(term=4, vote=2, commit=12)
    assert state.snapshot == SnapshotMeta(index=10, term=3, conf=conf)
    assert list(state.entries) == batch + ents(17, 40, term=5)
    assert s.entries(12, 14) == batch[1:3]
    assert (s.first_index(), s.last_index(), s.term(10), s.term(16), s.term(41)) == (11, 39, 3, 4, None)
    raw = b"".join((tmp_path / n).read_bytes() for n in segment_files(tmp_path))
    assert weird[4] in raw and bytes(range(256)) in raw  # stored verbatim, not encoded


def test_overwrite_conflicting_suffix(store: LogStore) -> None:
    store.save(HardState(1, 1, 0), ents(1, 11, term=1), sync=True)
    store.save(HardState(2, 2, 5), ents(6, 8, term=2), sync=True)
    assert store.last_index() == 7
    assert store.entries(1, 8) == ents(1, 6, 1) + ents(6, 8, 2)
    assert store.term(8) is None
    store.save(None, ents(8, 9, term=2), sync=True)  # append right after an overwrite
    assert store.entries(6, 9) == ents(6, 9, 2)


def test_overwrite_reaching_back_into_older_segment(tmp_path: Path) -> None:
    s = FileLogStore(tmp_path, segment_size=256)
    s.load()
    for i in range(1, 30):
        s.save(HardState(1, 1, 0), ents(i, i + 1, term=1), sync=False)
    assert len(segment_files(tmp_path)) > 3
    s.save(HardState(2, 0, 0), ents(3, 5, term=2), sync=True)
    s = reopen(s, tmp_path, segment_size=256)
    assert list(s.load().entries) == ents(1, 3, 1) + ents(3, 5, 2)
    assert s.hard_state() == HardState(2, 0, 0)


def test_compaction_derives_meta_and_keeps_suffix(store: LogStore) -> None:
    store.save(HardState(1, 1, 9), ents(1, 5, 1), sync=True)
    store.save(None, [Entry(1, 5, EntryKind.CONF, ConfState(voters=(1, 2)).encode())], sync=True)
    store.save(None, ents(6, 10, 2), sync=True)
    meta = store.compact(7)
    assert meta == SnapshotMeta(index=7, term=2, conf=ConfState(voters=(1, 2)))
    assert store.snapshot_meta() == meta and store.first_index() == 8
    assert store.entries(8, 10) == ents(8, 10, 2)
    assert store.term(7) == 2 and store.term(6) is None
    with pytest.raises(LogCompactedError):
        store.entries(7, 9)
    assert store.compact(3) == meta  # older index: nothing to do
    assert store.compact(9) == SnapshotMeta(9, 2, ConfState(voters=(1, 2)))
    assert store.last_index() == 9 and store.entries(10, 10) == []
    store.save(None, ents(10, 12, 3), sync=True)
    assert store.load().entries == tuple(ents(10, 12, 3))


def test_compact_with_given_meta_checks_it(store: LogStore) -> None:
    store.save(None, ents(1, 5, 2), sync=True)
    given = SnapshotMeta(3, 2, ConfState(voters=(7,)))
    assert store.compact(3, given) == given and store.snapshot_meta() == given
    with pytest.raises(ValueError):
        store.compact(4, SnapshotMeta(4, 1))
    with pytest.raises(ValueError):
        store.compact(9)


def test_apply_snapshot_keeps_matching_suffix_else_empties(store: LogStore) -> None:
    store.save(None, ents(1, 10, 1), sync=True)
    store.apply_snapshot(SnapshotMeta(4, 1))
    assert (store.first_index(), store.last_index()) == (5, 9)
    store.apply_snapshot(SnapshotMeta(6, 9))  # term disagrees: log emptied
    assert (store.first_index(), store.last_index(), store.term(6)) == (7, 6, 9)
    store.apply_snapshot(SnapshotMeta(20, 9))  # beyond the log
    assert (store.first_index(), store.last_index()) == (21, 20)
    store.apply_snapshot(SnapshotMeta(10, 1))  # stale: ignored
    assert store.snapshot_meta() == SnapshotMeta(20, 9)
    store.save(HardState(9, 0, 20), ents(21, 23, 9), sync=True)
    assert store.load().entries == tuple(ents(21, 23, 9))


def test_snapshot_and_compaction_survive_reopen(tmp_path: Path) -> None:
    # 316: the last segment has just room for the snapshot record (checkpoints are 16 bytes
    # larger since format 3 added the vote floor), so compaction does not roll over.
    s = FileLogStore(tmp_path, segment_size=316)
    s.load()
    for i in range(1, 41):
        s.save(HardState(1, 1, i - 1), ents(i, i + 1, 1), sync=False)
    before = len(segment_files(tmp_path))
    s.compact(29)
    after = segment_files(tmp_path)
    assert len(after) < before and after[-1] == f"{before:016d}.seg"
    oldest = (tmp_path / after[0]).read_bytes()
    assert ents(29, 30, 1)[0].data in oldest  # a segment partly below the snapshot stays...
    s = reopen(s, tmp_path, segment_size=316)
    state = s.load()
    assert state.snapshot.index == 29 and list(state.entries) == ents(30, 41, 1)  # ...but is skipped
    assert state.hard_state == HardState(1, 1, 39)
    s.apply_snapshot(SnapshotMeta(100, 4))
    assert len(segment_files(tmp_path)) == 1
    s = reopen(s, tmp_path, segment_size=316)
    assert s.load().snapshot == SnapshotMeta(100, 4) and s.last_index() == 100


def test_rollover_across_many_small_segments(tmp_path: Path) -> None:
    s = FileLogStore(tmp_path, segment_size=512)
    s.load()
    expected: list[Entry] = []
    for i in range(1, 121):
        batch = ents(i, i + 1, term=1 + i // 40, size=i % 50)
        s.save(HardState(1 + i // 40, 1, max(0, i - 3)), batch, sync=i % 7 == 0)
        expected += batch
    names = segment_files(tmp_path)
    assert len(names) >= 8
    assert [int(n[:16]) for n in names] == list(range(1, len(names) + 1))
    assert all((tmp_path / n).stat().st_size <= 512 for n in names[:-1])
    s = reopen(s, tmp_path, segment_size=512)
    state = s.load()
    assert list(state.entries) == expected and state.hard_state == HardState(4, 1, 117)


def test_huge_batch_goes_into_one_segment(tmp_path: Path) -> None:
    s = FileLogStore(tmp_path, segment_size=256)
    s.load()
    s.save(None, ents(1, 100, 1, size=100), sync=True)
    assert len(segment_files(tmp_path)) == 1
    s.save(None, ents(100, 101, 1), sync=True)
    assert len(segment_files(tmp_path)) == 2
    expected = ents(1, 100, 1, size=100) + ents(100, 101, 1)
    assert reopen(s, tmp_path, segment_size=256).load().entries == tuple(expected)


@pytest.mark.parametrize("bad", [
    lambda: ents(3, 4, 1),  # gap after last index 1
    lambda: [Entry(1, 2), Entry(1, 4)],  # not contiguous
    lambda: ents(1, 2, 1),  # at or below the snapshot
])
def test_bad_batches_are_rejected_without_damage(store: LogStore, bad: object) -> None:
    store.apply_snapshot(SnapshotMeta(0, 0))
    store.save(None, ents(1, 2, 1), sync=True)
    store.compact(1)
    with pytest.raises(ValueError):
        store.save(None, bad(), sync=True)  # type: ignore[operator]
    store.save(None, ents(2, 3, 1), sync=True)
    assert store.entries(2, 3) == ents(2, 3, 1)


def test_entries_range_checks(store: LogStore) -> None:
    store.save(None, ents(1, 4, 1), sync=True)
    with pytest.raises(ValueError):
        store.entries(2, 6)
    with pytest.raises(ValueError):
        store.entries(3, 2)
    assert store.entries(4, 4) == []


def test_one_write_and_one_datasync_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = FileLogStore(tmp_path)
    s.load()
    calls: list[str] = []
    real_pwrite, real_sync = os.pwrite, fsutil.datasync
    monkeypatch.setattr(os, "pwrite", spy(calls, "pwrite", real_pwrite))
    monkeypatch.setattr(os, "fsync", spy(calls, "fsync"))
    monkeypatch.setattr(fsutil, "datasync", spy(calls, "datasync", real_sync))
    s.save(HardState(3, 1, 50), ents(1, 101, 3, size=200), sync=True)
    assert calls == ["pwrite", "datasync"]
    calls.clear()
    s.save(HardState(3, 1, 50), [], sync=True)  # nothing new and nothing pending
    s.save(HardState(3, 1, 51), [], sync=False)
    s.save(None, [], sync=True)  # flushes the pending hard state
    assert calls == ["pwrite", "datasync"]


def test_write_failure_poisons_store_until_reopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = FileLogStore(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 3, 1), sync=True)

    def failing(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(fsutil, "datasync", failing)
    with pytest.raises(OSError):
        s.save(None, ents(3, 4, 1), sync=True)
    with pytest.raises(LogFailedError):
        s.save(None, ents(4, 5, 1), sync=True)
    monkeypatch.undo()
    s.close()
    with pytest.raises(LogStoreError):
        s.last_index()
    state = FileLogStore(tmp_path).load()
    assert list(state.entries)[:2] == ents(1, 3, 1)
