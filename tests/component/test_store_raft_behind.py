"""The store against a raft process whose log is, for a while, shorter than what the store
has applied (it salvaged a damaged log and is fetching the rest from its leader): the store
waits, neither failing, diverging, nor asking again and again in a busy loop."""

from __future__ import annotations

import time

from tests.component.fakes import FakeRaft
from tests.component.test_store_proc import (  # noqa: F401  (the `node` fixture)
    count_rows,
    create_entry,
    insert_entries,
    node,
    start_store,
    store_status,
    wait_status,
)


def test_store_waits_for_a_raft_process_behind_its_applied_index(node) -> None:
    config, path, procs = node
    with FakeRaft(config) as raft:
        raft.commit_entries([create_entry(1), *insert_entries(2, 9)])
        procs.append(start_store(path))
        assert count_rows(config, 10) == 9
        raft.announce_commit(12)  # heard of, but never fetched: the store knows of 11..12
        wait_status(config, lambda s: s["known_commit"] == 12)
        with raft._lock:  # the raft process restarts from a salvaged log: 1..4, commit 4
            raft.entries = raft.entries[:4]
            raft.commit = 4
        time.sleep(0.2)
        before = raft.fetches
        time.sleep(1.0)
        fetches = raft.fetches - before
        assert fetches < 20, f"{fetches} fetches in 1 s: the store polls a raft process that has nothing"
        status = store_status(config)
        assert status["applied"] == 10
        # The leader re-sends the lost entries (the same committed entries) and more.
        entries = [create_entry(1), *insert_entries(2, 14)]
        with raft._lock:
            raft.entries = entries
            raft.commit = 15
        assert count_rows(config, 15) == 14
