"""Entries the store cannot decode never stop or crash it; entries from a newer zraft wait.

- A payload no build can apply (not JSON, not an object, bad statements, a bad stamp) gives
  the same error result on every node and the applied index moves on: everything after it
  is applied, by a Database, by the store's EntryApplier and by a real store process.
- A payload of a newer command version is not answered (an upgraded node would apply it):
  the store applies what comes before it, stops there without exiting, says why in its
  status (``StoreStatus.disk_full``, which the raft process also reads), keeps serving reads
  and tries again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tests.component.fakes import FakeRaft
from tests.component.test_store_proc import call, count_rows, create_entry, insert_entries, node, start_store
from zraft.procs.applying import EntryApplier
from zraft.procs.shell import Counters
from zraft.raft.types import Entry, EntryKind
from zraft.store import Command, Database, Statement, encode_command
from zraft.store.db import NewerCommand
from zraft.wire.messages import StatusRequest, StoreStatus

__all__ = ["node"]  # the store-process fixture, shared with test_store_proc

UNDECODABLE = [
    b"not json",
    b"\xff\xfe\x00",
    b"[1, 2, 3]",
    b'"a string"',
    b"{}",
    b'{"v": 1, "tx": false, "stmts": [{"sql": 5}]}',
    b'{"v": 1, "tx": false, "stmts": [{"sql": "x", "params": [{"b64": "!!"}]}]}',
    b'{"v": 3, "tx": false, "stmts": []}',
    b'{"v": 3, "tx": false, "stmts": [], "time_ms": -1, "seed": 1, "budget": 1}',
    b'{"v": 3, "tx": false, "stmts": [], "time_ms": 1, "seed": 1, "budget": 0}',
    b'{"v": 3, "tx": false, "stmts": [], "time_ms": 1, "seed": true, "budget": 1}',
    b'{"v": "3", "tx": false, "stmts": []}',
    b'{"v": 0, "tx": false, "stmts": []}',
    b'{"v": true, "tx": false, "stmts": []}',
]
NEWER = b'{"v": 99, "tx": false, "stmts": [{"sql": "INSERT INTO t(v) VALUES(1)"}], "more": "fields"}'


def cmd(sql: str) -> bytes:
    return encode_command(Command.stamped([Statement(sql)], time_ms=1, seed=1))


def test_undecodable_entries_are_error_results_and_everything_after_applies(tmp_path: Path) -> None:
    entries: list[tuple[int, bytes | None]] = [(1, cmd("CREATE TABLE t(id INTEGER PRIMARY KEY, v)"))]
    for payload in UNDECODABLE:
        entries.append((len(entries) + 1, payload))
        entries.append((len(entries) + 1, cmd(f"INSERT INTO t(v) VALUES({len(entries) + 1})")))
    for batch in (1, 5, len(entries)):
        with Database(tmp_path / f"b{batch}.db") as db:
            results = []
            for start in range(0, len(entries), batch):
                results += db.apply_entries(entries[start:start + batch])
            assert db.applied_index() == len(entries)
            bad = [r.render() for r in results[1::2]]
            assert all(len(r) == 1 and r[0]["error"].startswith(f"entry {2 * k + 2} is not a valid command: ")
                       for k, r in enumerate(bad)), bad
            (count,) = db.query([Statement("SELECT count(*) FROM t")])
            assert count["values"] == [[len(UNDECODABLE)]]


def test_a_newer_entry_stops_the_batch_before_anything_runs(tmp_path: Path) -> None:
    with Database(tmp_path / "db.sqlite") as db:
        db.apply_entries([(1, cmd("CREATE TABLE t(v)"))])
        with pytest.raises(NewerCommand, match="entry 3 needs a newer zraft") as raised:
            db.apply_entries([(2, cmd("INSERT INTO t VALUES(2)")), (3, NEWER), (4, cmd("INSERT INTO t VALUES(4)"))])
        assert raised.value.index == 3 and db.applied_index() == 1


def test_the_entry_applier_applies_up_to_a_newer_entry_then_waits(tmp_path: Path) -> None:
    stats = Counters(logging.getLogger("test"))
    applier = EntryApplier(tmp_path / "db.sqlite", 100, stats)
    try:
        entries = [Entry(1, 1, EntryKind.NORMAL, cmd("CREATE TABLE t(v)")),
                   Entry(1, 2, EntryKind.NORMAL, cmd("INSERT INTO t VALUES(2)")),
                   Entry(1, 3, EntryKind.NORMAL, NEWER),
                   Entry(1, 4, EntryKind.NORMAL, cmd("INSERT INTO t VALUES(4)"))]
        assert applier.apply(entries, now=100.0) is False
        assert applier.applied == 2
        assert "entry 3 needs a newer zraft" in applier.disk_full
        assert applier.waiting_for_disk(100.5) and not applier.waiting_for_disk(101.5)
        assert applier.apply(entries[2:], now=101.5) is False and applier.applied == 2
        assert applier.db.query([Statement("SELECT count(*) FROM t")])[0]["values"] == [[1]]
    finally:
        applier.close()


def test_a_store_process_applies_past_garbage_and_waits_at_a_newer_entry(node) -> None:
    config, path, procs = node
    with FakeRaft(config) as raft:
        garbage = [Entry(1, 2 + k, EntryKind.NORMAL, payload) for k, payload in enumerate(UNDECODABLE)]
        after = 2 + len(garbage)
        raft.commit_entries([create_entry(1), *garbage, *insert_entries(after, 10)])
        procs.append(start_store(path))
        assert count_rows(config, min_applied=after + 9) == 10
        newer_at = after + 10
        raft.commit_entries([Entry(1, newer_at, EntryKind.NORMAL, NEWER), *insert_entries(newer_at + 1, 5)])
        deadline = time.monotonic() + 10
        while True:
            status = call(config, StatusRequest(id=1))
            assert isinstance(status, StoreStatus)
            if status.disk_full or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert f"entry {newer_at} needs a newer zraft" in status.disk_full
        assert status.applied == newer_at - 1
        assert count_rows(config, min_applied=0) == 10  # reads of what is applied go on
        time.sleep(1.5)
        assert any("needs a newer zraft" in report for report in raft.disk_full_reports)
        assert procs[0].poll() is None  # it never exits
        status = call(config, StatusRequest(id=2))
        assert isinstance(status, StoreStatus) and status.applied == newer_at - 1
