"""Random sequences of save / overwrite / snapshot / compact / reopen on FileLogStore,
checked step by step against MemoryLogStore as the model."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zraft.logstore import FileLogStore, MemoryLogStore, fsutil
from zraft.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta

SEGMENT_SIZE = 256  # tiny, so rollover and segment deletion happen constantly

voter_ids = st.lists(st.integers(1, 5), max_size=3, unique=True).map(lambda v: tuple(sorted(v)))
confs = st.builds(ConfState, voters=voter_ids)


def draw_entries(data: st.DataObject, first: int, count: int) -> list[Entry]:
    out = []
    for index in range(first, first + count):
        if data.draw(st.booleans(), label="conf") and index % 3 == 0:
            kind, payload = EntryKind.CONF, data.draw(confs).encode()
        else:
            kind, payload = EntryKind.NORMAL, data.draw(st.binary(max_size=60))
        out.append(Entry(data.draw(st.integers(1, 4)), index, kind, payload))
    return out


def step(data: st.DataObject, store: FileLogStore, model: MemoryLogStore, root: Path) -> FileLogStore:
    first, last = model.first_index(), model.last_index()
    op = data.draw(st.sampled_from(["save", "save", "save", "hard", "snapshot", "compact", "reopen"]))
    if op == "save":
        start = data.draw(st.integers(first, last + 1), label="start")
        batch = draw_entries(data, start, data.draw(st.integers(1, 6)))
        hard_states = st.builds(HardState, st.integers(0, 9), st.integers(0, 3), st.integers(0, 20))
        hs = data.draw(st.none() | hard_states)
        sync = data.draw(st.booleans())
        for s in (store, model):
            s.save(hs, batch, sync)
    elif op == "hard":
        hs = HardState(data.draw(st.integers(0, 9)), 1, data.draw(st.integers(0, 20)))
        for s in (store, model):
            s.save(hs, [], data.draw(st.booleans()))
    elif op == "snapshot":
        index = data.draw(st.integers(max(0, first - 2), last + 3))
        term = data.draw(st.sampled_from([model.term(index) or 1, 1, 5]))
        meta = SnapshotMeta(index, term, data.draw(confs))
        for s in (store, model):
            s.apply_snapshot(meta)
    elif op == "compact":
        index = data.draw(st.integers(first - 1, last))
        assert store.compact(index) == model.compact(index)
    else:
        store.close()
        store = FileLogStore(root, segment_size=SEGMENT_SIZE)
        assert store.load() == model.load()
    return store


@contextmanager
def no_flushes() -> Iterator[None]:
    """This test is about logic, not durability (the crash tests cover that): skipping real
    flushes keeps hundreds of tiny-segment rollovers fast."""
    with mock.patch.object(fsutil, "datasync"), mock.patch.object(fsutil, "fsync_dir"), \
            mock.patch.object(os, "fsync"):
        yield


def check_same(store: FileLogStore, model: MemoryLogStore) -> None:
    first, last = model.first_index(), model.last_index()
    assert (store.first_index(), store.last_index()) == (first, last)
    assert store.hard_state() == model.hard_state() and store.snapshot_meta() == model.snapshot_meta()
    assert store.entries(first, last + 1) == model.entries(first, last + 1)
    around = range(first - 2, last + 3)
    assert [store.term(i) for i in around] == [model.term(i) for i in around]


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_file_store_matches_memory_model(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp, no_flushes():
        root = Path(tmp)
        store, model = FileLogStore(root, segment_size=SEGMENT_SIZE), MemoryLogStore()
        assert store.load() == model.load()
        for _ in range(data.draw(st.integers(5, 30), label="steps")):
            store = step(data, store, model, root)
            check_same(store, model)
        store.close()
        assert FileLogStore(root, segment_size=SEGMENT_SIZE).load() == model.load()
