"""Salvage of a log with damage in synced data: what it reads back, when it refuses, and the
crash-safe quarantine that replaces the damaged log by the salvaged one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zraft.logstore import FileLogStore, LogCorruptError
from zraft.logstore.records import FRAME_HEADER, RecordType, decode_entry_head
from zraft.logstore.salvage import (
    COMPLETE_MARKER,
    SALVAGE_SUFFIX,
    SalvageRefused,
    finish_interrupted,
    quarantine,
    salvage,
)
from zraft.logstore.segment import list_segments, scan_segment
from zraft.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta

SEG = 4096
CONF = SnapshotMeta(conf=ConfState(voters=(1, 2, 3)))


def write_log(directory: Path, batches: int, per_batch: int = 5, term: int = 2, vote: int = 3) -> int:
    """Batches of entries, each followed by a hard state whose commit trails by one batch
    (as on a follower), all synced; returns the last index."""
    with FileLogStore(directory, segment_size=SEG) as store:
        store.load()
        store.apply_snapshot(CONF)
        index = 0
        for _ in range(batches):
            entries = [Entry(term, index + 1 + k, EntryKind.NORMAL, b"d" * 40) for k in range(per_batch)]
            store.save(HardState(term, vote, max(0, index - per_batch)), entries, sync=True)
            index += per_batch
    return index


def frames(directory: Path, rtype: RecordType) -> list[tuple[Path, int, int]]:
    """(segment, offset, entry index or 0) of every frame of `rtype`, oldest first."""
    found = []
    for seq, path in list_segments(directory):
        scan = scan_segment(seq, path, is_last=True)
        for frame in scan.frames:
            if frame.rtype == rtype:
                index = decode_entry_head(frame.payload(scan.data)).index if rtype == RecordType.ENTRY else 0
                found.append((path, frame.offset, index))
    return found


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def load_error(directory: Path) -> LogCorruptError:
    with pytest.raises(LogCorruptError) as info:
        FileLogStore(directory, segment_size=SEG).load()
    return info.value


def test_bit_flip_in_an_entry_of_an_older_segment(tmp_path: Path) -> None:
    last = write_log(tmp_path, batches=40)
    path, offset, index = frames(tmp_path, RecordType.ENTRY)[22]
    assert path != list_segments(tmp_path)[-1][1]  # an older segment
    flip(path, offset + FRAME_HEADER.size + 30)  # in the entry's data
    got = salvage(tmp_path, load_error(tmp_path))
    assert got.prefix_last == index - 1
    assert got.exact and got.lost_last == (2, last)
    # Only what was committed before the damage: the rest may have been overwritten after it.
    commit_before = (index - 1) // 5 * 5 - 2 * 5  # the hard state after the previous batch
    assert [e.index for e in got.entries] == list(range(1, commit_before + 1))
    assert all(e.data == b"d" * 40 for e in got.entries)
    assert got.hard_state == HardState(2, 3, commit_before, 2, last)
    assert got.snapshot == CONF


def test_bit_flip_in_synced_data_of_the_last_segment(tmp_path: Path) -> None:
    last = write_log(tmp_path, batches=40)
    last_seg = list_segments(tmp_path)[-1][1]
    path, offset, index = [f for f in frames(tmp_path, RecordType.ENTRY) if f[0] == last_seg][1]
    flip(path, offset + FRAME_HEADER.size + 20)
    error = load_error(tmp_path)
    assert "synced" in error.reason
    got = salvage(tmp_path, error)
    assert got.exact and got.lost_last == (2, last) and got.prefix_last == index - 1
    assert got.hard_state.vote_floor() == (2, last)
    assert got.entries[-1].index == got.hard_state.commit <= index - 1


def test_damage_in_the_last_entry_gives_an_upper_bound(tmp_path: Path) -> None:
    """The damaged entry is the newest: its index is unreadable, so L is bounded from above
    (latest term, the prefix's last index + 1), which is safe, only possibly stricter."""
    with FileLogStore(tmp_path, segment_size=SEG) as store:
        store.load()
        store.apply_snapshot(CONF)
        store.save(HardState(2, 3, 0), [Entry(2, i, EntryKind.NORMAL, b"x" * 30) for i in range(1, 6)], sync=True)
        store.save(HardState(3, 1, 5), [Entry(3, 6, EntryKind.NORMAL, b"y" * 30)], sync=True)
        store.save(HardState(3, 1, 6), [], sync=True)  # its watermark proves entry 6 was synced
    path, offset, index = frames(tmp_path, RecordType.ENTRY)[-1]
    assert index == 6
    flip(path, offset + FRAME_HEADER.size + 25)
    got = salvage(tmp_path, load_error(tmp_path))
    assert not got.exact and got.lost_last == (3, 6)
    assert got.hard_state.term == 3 and got.hard_state.vote == 1


def test_damaged_latest_hard_state_is_not_salvaged(tmp_path: Path) -> None:
    """Nothing after the damaged record tells the latest term and vote: refuse."""
    with FileLogStore(tmp_path, segment_size=SEG) as store:
        store.load()
        store.apply_snapshot(CONF)
        store.save(HardState(2, 3, 0), [Entry(2, i, EntryKind.NORMAL, b"x" * 30) for i in range(1, 6)], sync=True)
        store.save(HardState(5, 2, 0), [], sync=True)  # a vote in term 5
        store.save(None, [Entry(2, 6, EntryKind.NORMAL, b"z")], sync=True)
        store.save(None, [Entry(2, 7, EntryKind.NORMAL, b"z")], sync=True)  # its watermark proves the sync
    path, offset, _ = frames(tmp_path, RecordType.HARD_STATE)[-1]
    flip(path, offset + FRAME_HEADER.size + 1)
    error = load_error(tmp_path)
    with pytest.raises(SalvageRefused, match="hard state"):
        salvage(tmp_path, error)


def test_damaged_hard_state_in_an_older_segment_is_superseded_by_the_next_checkpoint(tmp_path: Path) -> None:
    write_log(tmp_path, batches=40)
    path, offset, _ = frames(tmp_path, RecordType.HARD_STATE)[3]
    assert path != list_segments(tmp_path)[-1][1]
    flip(path, offset + FRAME_HEADER.size + 2)
    got = salvage(tmp_path, load_error(tmp_path))
    assert (got.hard_state.term, got.hard_state.vote) == (2, 3) and got.exact


def test_damaged_checkpoint_is_not_salvaged(tmp_path: Path) -> None:
    write_log(tmp_path, batches=40)
    path, offset, _ = frames(tmp_path, RecordType.CHECKPOINT)[2]
    flip(path, offset + FRAME_HEADER.size + 3)
    with pytest.raises(SalvageRefused, match="checkpoint"):
        salvage(tmp_path, load_error(tmp_path))


def test_damaged_length_field_is_not_salvaged(tmp_path: Path) -> None:
    """Where the damaged record ends is then unknown: records found by searching could be
    client bytes inside entry data."""
    write_log(tmp_path, batches=40)
    path, offset, _ = frames(tmp_path, RecordType.ENTRY)[10]
    flip(path, offset + 4)  # the length's low byte
    with pytest.raises(SalvageRefused):
        salvage(tmp_path, load_error(tmp_path))


def test_damage_in_two_places_is_not_salvaged(tmp_path: Path) -> None:
    write_log(tmp_path, batches=40)
    entries = frames(tmp_path, RecordType.ENTRY)
    for path, offset, _ in (entries[10], entries[150]):
        flip(path, offset + FRAME_HEADER.size + 20)
    with pytest.raises(SalvageRefused, match="more than one place|second"):
        salvage(tmp_path, load_error(tmp_path))


# == quarantine =================================================================================
def test_quarantine_replaces_the_log_and_keeps_the_damaged_one(tmp_path: Path) -> None:
    log_dir = tmp_path / "raft"
    last = write_log(log_dir, batches=40)
    path, offset, _ = frames(log_dir, RecordType.ENTRY)[30]
    flip(path, offset + FRAME_HEADER.size + 30)
    got = salvage(log_dir, load_error(log_dir))
    aside = quarantine(log_dir, got, segment_size=SEG)
    assert aside == tmp_path / "raft.corrupt-1" and aside.is_dir()
    assert len(list_segments(aside)) > 1  # the damaged log, untouched
    with FileLogStore(log_dir, segment_size=SEG) as store:
        state = store.load()
    assert state.entries == got.entries and state.snapshot == CONF
    assert state.hard_state == got.hard_state and state.hard_state.vote_floor() == (2, last)
    assert (log_dir / COMPLETE_MARKER).exists() and not (tmp_path / ("raft" + SALVAGE_SUFFIX)).exists()
    # A second damage later goes to the next free name.
    with FileLogStore(log_dir, segment_size=SEG) as store:
        store.load()
    assert quarantine(log_dir, got, segment_size=SEG) == tmp_path / "raft.corrupt-2"


def test_a_crash_between_the_renames_is_finished_at_the_next_start(tmp_path: Path) -> None:
    log_dir = tmp_path / "raft"
    write_log(log_dir, batches=40)
    path, offset, _ = frames(log_dir, RecordType.ENTRY)[30]
    flip(path, offset + FRAME_HEADER.size + 30)
    got = salvage(log_dir, load_error(log_dir))
    real_rename = os.rename
    calls: list[Path] = []

    def crash_on_second(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(Path(src))
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real_rename(src, dst)

    os.rename = crash_on_second  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            quarantine(log_dir, got, segment_size=SEG)
    finally:
        os.rename = real_rename  # type: ignore[assignment]
    assert not log_dir.exists()
    finish_interrupted(log_dir)
    with FileLogStore(log_dir, segment_size=SEG) as store:
        assert store.load().hard_state == got.hard_state


def test_an_unfinished_build_is_removed_and_the_damaged_log_stays(tmp_path: Path) -> None:
    log_dir = tmp_path / "raft"
    write_log(log_dir, batches=5)
    staging = tmp_path / ("raft" + SALVAGE_SUFFIX)
    staging.mkdir()
    (staging / "0000000000000001.seg").write_bytes(b"half")
    finish_interrupted(log_dir)
    assert not staging.exists() and log_dir.is_dir()


def test_missing_log_beside_an_unfinished_build_refuses(tmp_path: Path) -> None:
    staging = tmp_path / ("raft" + SALVAGE_SUFFIX)
    staging.mkdir()
    with pytest.raises(SalvageRefused):
        finish_interrupted(tmp_path / "raft")
