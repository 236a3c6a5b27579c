"""The chaos suite's bit flip: it lands only in provably synced entry data, the log store
refuses to load it, and undoing it restores a log that loads. No root needed."""

from __future__ import annotations

import random

import pytest

from zraft.chaos.disks import flip_synced_entry_bit, undo_flip
from zraft.logstore import FileLogStore, LogCorruptError
from zraft.raft.types import Entry, EntryKind, HardState


def _write_log(directory, batches: int, synced: bool = True) -> None:
    store = FileLogStore(directory, segment_size=4096)
    store.load()
    index = 1
    for _ in range(batches):
        entries = [Entry(1, index + k, EntryKind.NORMAL, b"x" * 40) for k in range(5)]
        store.save(HardState(1, 1, 0), entries, sync=synced)
        index += 5
    store.close()


@pytest.mark.parametrize("seed", range(8))
def test_a_flip_is_caught_by_the_checksums_and_undoing_it_heals(tmp_path, seed):
    log = tmp_path / "raft"
    _write_log(log, batches=40)
    flip = flip_synced_entry_bit(log, random.Random(seed))
    assert flip is not None
    with pytest.raises(LogCorruptError):
        FileLogStore(log, segment_size=4096).load()
    assert undo_flip(flip)
    state = FileLogStore(log, segment_size=4096).load()
    assert state.entries[-1].index == 200


def test_nothing_to_flip_in_an_unsynced_tail(tmp_path):
    """Unsynced bytes may be legitimately cut on load: damaging them would prove nothing."""
    log = tmp_path / "raft"
    _write_log(log, batches=3, synced=False)
    assert flip_synced_entry_bit(log, random.Random(1)) is None
