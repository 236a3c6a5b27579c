"""Crash recovery: a torn tail at every byte of the last segment is cut back to the records
fully written before it; any other damage raises LogCorruptError."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zraft.logstore import FileLogStore, LogCorruptError, LogStore, MemoryLogStore, fsutil
from zraft.logstore.records import RecordType, encode_entry, encode_hard_state
from zraft.logstore.segment import FILE_HEADER
from zraft.raft.types import ConfState, Entry, EntryKind, HardState, InitialState, SnapshotMeta

SEG = 4096


def ents(lo: int, hi: int, term: int, size: int = 13) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, bytes([(i * 7) % 256]) * size) for i in range(lo, hi)]


def seg_paths(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def spy(calls: list[str], name: str, real: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A stand-in for a system call that records that it was called."""
    def wrapper(*args: Any) -> Any:
        calls.append(name)
        return None if real is None else real(*args)
    return wrapper


Op = Callable[[LogStore], object]


def single_record_ops() -> list[Op]:
    """Operations that each append exactly one record (after a watermark when a sync
    completed since the last one: a cut inside it loses nothing)."""
    hs = HardState(2, 1, 3)
    conf = Entry(3, 9, EntryKind.CONF, ConfState((1, 2)).encode())
    return [
        lambda s: s.save(None, ents(9, 10, 2), True),
        lambda s: s.save(hs, [], True),
        lambda s: s.save(None, ents(10, 11, 2, size=150), False),
        lambda s: s.save(None, ents(8, 9, 3), True),  # overwrites 8..10
        lambda s: s.save(None, [conf], True),
        lambda s: s.compact(5),  # a snapshot record
    ]


def build(path: Path) -> tuple[list[int], list[InitialState]]:
    """A log whose second (last) segment holds a checkpoint and then single records plus a
    multi-record batch; returns each record end offset in that segment with the state that
    must be loaded when the file is cut there."""
    store, model = FileLogStore(path, segment_size=SEG, preallocate=False), MemoryLogStore()
    store.load()
    for s in (store, model):
        s.save(HardState(1, 1, 0), ents(1, 9, 1, size=500), True)  # fills segment 1
    seg2 = None
    ends, states = [], []
    for op in single_record_ops():
        op(store)
        if seg2 is None:  # the first op rolled over: the checkpoint is the segment's first record
            seg2 = seg_paths(path)[-1]
            first = seg2.read_bytes()
            ends.append(FILE_HEADER.size + _frame_size(first, FILE_HEADER.size))
            states.append(model.load())
        op(model)
        ends.append(seg2.stat().st_size)
        states.append(model.load())
    batch, hs = ents(10, 15, 4, size=20), HardState(4, 2, 9)
    store.save(hs, batch, True)
    assert seg2 is not None
    offset = ends[-1] + _watermark_size(seg2.read_bytes(), ends[-1])  # the batch starts with one
    for k in range(len(batch)):
        offset += len(encode_entry(batch[k]))
        model.save(None, batch[k : k + 1], True)
        ends.append(offset)
        states.append(model.load())
    model.save(hs, [], True)
    ends.append(offset + len(encode_hard_state(hs)))
    states.append(model.load())
    store.close()
    assert seg2 is not None and seg2.stat().st_size == ends[-1] and len(seg_paths(path)) == 2
    return ends, states


def _frame_size(data: bytes, offset: int) -> int:
    return 9 + int.from_bytes(data[offset + 4 : offset + 8], "little")


def _watermark_size(data: bytes, offset: int) -> int:
    return _frame_size(data, offset) if data[offset + 8] == RecordType.WATERMARK else 0


def expected_at(cut: int, ends: list[int], states: list[InitialState]) -> InitialState:
    done = [k for k, end in enumerate(ends) if end <= cut]
    return states[done[-1]] if done else states[0]


def check_loads(root: Path, ends: list[int], states: list[InitialState], cut: int,
                then_save: bool = True) -> None:
    """load() returns exactly the state after the last record wholly before `cut`; then
    (optionally) a new entry can be saved on the repaired log and survives a reopen."""
    store = FileLogStore(root, segment_size=SEG)
    state = store.load()
    assert state == expected_at(cut, ends, states), f"cut at {cut}"
    if not then_save:
        store.close()
        return
    nxt = store.last_index() + 1
    term = max(state.hard_state.term, store.term(nxt - 1) or 0)
    store.save(HardState(term, 0, 0), ents(nxt, nxt + 1, term), True)
    store.close()
    again = FileLogStore(root, segment_size=SEG).load()
    assert again.entries[-1:] == tuple(ents(nxt, nxt + 1, term)) and again.hard_state.term == term


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Crashes are simulated by cutting files, so real flushes only cost time here."""
    monkeypatch.setattr(fsutil, "datasync", lambda fd: None)
    monkeypatch.setattr(fsutil, "fsync_dir", lambda path: None)
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def restore(root: Path, files: dict[str, bytes]) -> None:
    for path in seg_paths(root):
        if path.name not in files:
            path.unlink()
    for name, data in files.items():
        (root / name).write_bytes(data)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], list[InitialState]]:
    path = tmp_path_factory.mktemp("built")
    ends, states = build(path)
    return path, ends, states


def test_crash_at_every_byte_of_last_segment(built: tuple[Path, list[int], list[InitialState]],
                                             tmp_path: Path, no_fsync: None) -> None:
    src, ends, states = built
    size = ends[-1]
    originals = {p.name: p.read_bytes() for p in seg_paths(src)}
    last = max(originals)
    near_ends = {c for end in ends for c in (end - 1, end, end + 1)}
    for cut in range(size + 1):
        restore(tmp_path, originals)  # rewriting in place: far cheaper than a fresh copy
        (tmp_path / last).write_bytes(originals[last][:cut])
        check_loads(tmp_path, ends, states, cut, then_save=cut in near_ends or cut % 8 == 0)
    assert len({repr(expected_at(c, ends, states)) for c in range(size + 1)}) == len(ends)


def test_crash_leaving_zeros_in_preallocated_space(built: tuple[Path, list[int], list[InitialState]],
                                                   tmp_path: Path) -> None:
    src, ends, states = built
    near_ends = {c for end in ends for c in (end - 5, end - 1, end, end + 3) if 0 <= c <= ends[-1]}
    cuts = sorted(near_ends | {0, 10, 30})
    for cut in cuts:
        root = tmp_path / str(cut)
        shutil.copytree(src, root)
        last = seg_paths(root)[-1]
        data = last.read_bytes()
        last.write_bytes(data[:cut] + bytes(len(data) - cut + 5000))
        # zeros that were already there are not lost: the cut effectively moves past them
        effective = cut + len(data[cut:]) - len(data[cut:].lstrip(b"\0"))
        check_loads(root, ends, states, effective)


def flip(path: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def test_flipped_bit_in_middle_record_is_corruption(built: tuple[Path, list[int], list[InitialState]],
                                                    tmp_path: Path) -> None:
    src, ends, _ = built
    for offset in range(ends[3], ends[4]):  # every byte of one record in the middle
        root = tmp_path / str(offset)
        shutil.copytree(src, root)
        flip(seg_paths(root)[-1], offset)
        with pytest.raises(LogCorruptError) as info:
            FileLogStore(root, segment_size=SEG).load()
        assert info.value.offset == ends[3] and info.value.path == str(seg_paths(root)[-1])
        shutil.rmtree(root)


def test_flipped_bit_in_last_record_is_torn_tail(built: tuple[Path, list[int], list[InitialState]],
                                                 tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, ends, states = built
    for offset in range(ends[-2], ends[-1]):
        for mask in (0x01, 0x80):
            root = tmp_path / f"{offset}-{mask}"
            shutil.copytree(src, root)
            flip(seg_paths(root)[-1], offset, mask)
            with caplog.at_level(logging.WARNING, logger="zraft.logstore"):
                check_loads(root, ends, states, ends[-1] - 1)
            assert "torn tail" in caplog.text
            caplog.clear()
            shutil.rmtree(root)


def test_damage_in_older_segment_is_corruption_even_at_its_end(
        built: tuple[Path, list[int], list[InitialState]], tmp_path: Path) -> None:
    src, _, _ = built
    root = tmp_path / "flip"
    shutil.copytree(src, root)
    first = seg_paths(root)[0]
    flip(first, first.stat().st_size - 3)
    with pytest.raises(LogCorruptError, match="checksum"):
        FileLogStore(root).load()


def test_lost_records_at_end_of_older_segment_is_corruption(
        built: tuple[Path, list[int], list[InitialState]], tmp_path: Path) -> None:
    src, _, _ = built
    root = tmp_path / "short"
    shutil.copytree(src, root)
    first = seg_paths(root)[0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) - len(encode_hard_state(HardState(1, 1, 0)))])  # its last record
    with pytest.raises(LogCorruptError, match="checkpoint"):
        FileLogStore(root).load()


@pytest.mark.parametrize("which", [0, -1])
def test_bad_magic_is_corruption(built: tuple[Path, list[int], list[InitialState]], tmp_path: Path,
                                 which: int) -> None:
    src, _, _ = built
    shutil.copytree(src, tmp_path / "m")
    path = seg_paths(tmp_path / "m")[which]
    flip(path, 2)
    with pytest.raises(LogCorruptError, match="magic") as info:
        FileLogStore(tmp_path / "m").load()
    assert info.value.offset == 0


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path, segment_size=200)
    store.load()
    for i in range(1, 20):
        store.save(None, ents(i, i + 1, 1, size=100), True)
    store.close()
    seg_paths(tmp_path)[3].unlink()
    with pytest.raises(LogCorruptError, match="missing"):
        FileLogStore(tmp_path).load()


def test_lost_oldest_segment_is_corruption(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path, segment_size=200)
    store.load()
    for i in range(1, 20):
        store.save(None, ents(i, i + 1, 1, size=100), True)
    store.close()
    seg_paths(tmp_path)[0].unlink()
    with pytest.raises(LogCorruptError, match="missing"):
        FileLogStore(tmp_path).load()


def test_gap_in_indexes_is_corruption(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path, preallocate=False)
    store.save(None, ents(1, 4, 1), True)
    store.close()
    last = seg_paths(tmp_path)[-1]
    with open(last, "ab") as f:  # a well-formed record that skips index 4
        f.write(encode_entry(ents(5, 6, 1)[0]) + encode_entry(ents(6, 7, 1)[0]))
    with pytest.raises(LogCorruptError, match="gap"):
        FileLogStore(tmp_path).load()


def test_damage_after_load_is_caught_on_read(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path, segment_size=SEG)
    store.save(None, ents(1, 10, 1), True)
    flip(seg_paths(tmp_path)[-1], seg_paths(tmp_path)[-1].read_bytes().index(ents(5, 6, 1)[0].data))
    with pytest.raises(LogCorruptError, match="entry 5"):
        store.entries(1, 10)
    assert store.entries(6, 10) == ents(6, 10, 1)


def test_torn_creation_of_first_segment_starts_fresh(tmp_path: Path) -> None:
    (tmp_path / "0000000000000001.seg").write_bytes(b"ZRAFT")
    assert FileLogStore(tmp_path).load() == InitialState()
    assert [p.name for p in seg_paths(tmp_path)] == ["0000000000000001.seg"]


def test_segments_are_deleted_only_after_snapshot_record_is_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting first could leave a log whose start no durable record explains."""
    store = FileLogStore(tmp_path, segment_size=300)
    for i in range(1, 30):
        store.save(HardState(1, 1, i), ents(i, i + 1, 1), False)
    calls: list[str] = []
    real_unlink, real_sync = os.unlink, fsutil.datasync
    monkeypatch.setattr(os, "unlink", spy(calls, "unlink", real_unlink))
    monkeypatch.setattr(fsutil, "datasync", spy(calls, "sync", real_sync))
    store.compact(20)
    assert calls[0] == "sync" and calls.count("unlink") >= 5
    store.close()
    assert FileLogStore(tmp_path).load().entries == tuple(ents(21, 30, 1))
