"""The store process on a full disk: applying fails without a crash, waits for what cannot be
applied end at once with "disk full: ...", reads of what is applied go on, the raft process is
told, and once space returns every entry is applied and the database is intact."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import apsw
import pytest

from tests.component.disk_full_support import inflate_balloon, small_tmpfs
from tests.component.fakes import FakeRaft
from tests.component.test_raft_proc_support import wait_for
from tests.component.test_store_proc import call, count_rows, create_entry, insert_entries, make_config, start_store
from zraft.raft.types import Entry, EntryKind
from zraft.store.command import Command, Statement, encode_command
from zraft.wire.messages import AppliedResult, Error, Query, StatusRequest, StoreStatus, WaitApplied

pytestmark = pytest.mark.timeout(60)


def big_inserts(start: int, count: int) -> list[Entry]:
    cmd = Command([Statement("INSERT INTO t(v) VALUES(?)", ["y" * 20000])], transaction=False)
    return [Entry(1, i, EntryKind.NORMAL, encode_command(cmd)) for i in range(start, start + count)]


def store_status(config) -> dict:
    reply = call(config, StatusRequest(id=1))
    assert isinstance(reply, StoreStatus), reply
    return asdict(reply)


def test_store_on_a_full_disk_rolls_back_keeps_reading_and_catches_up(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    with small_tmpfs(root):
        config, path = make_config(root)
        proc = None
        try:
            with FakeRaft(config) as raft:
                raft.commit_entries([create_entry(1), *insert_entries(2, 10)])
                proc = start_store(path)
                assert count_rows(config, min_applied=11) == 10
                balloon = inflate_balloon(root)
                raft.commit_entries(big_inserts(12, 40))

                start = time.monotonic()
                failed = call(config, WaitApplied(id=5, index=51, term=1, timeout_ms=5000))
                assert time.monotonic() - start < 3.0
                assert isinstance(failed, Error) and failed.code == "not_applied", failed
                assert failed.message.startswith(f"disk full: {config.db_path}")
                status = store_status(config)
                assert status["applied"] == 11 and status["disk_full"].startswith("disk full: ")
                assert count_rows(config, min_applied=0) == 10  # reads go on
                read = call(config, Query(id=2, statements=[Statement("SELECT 1")], min_applied=51))
                assert isinstance(read, Error) and read.code == "disk_full", read
                wait_for("the raft process to be told", lambda: any(raft.disk_full_reports), 5)
                assert proc.poll() is None

                os.unlink(balloon)
                wait_for("every entry applied", lambda: store_status(config)["applied"] == 51, 10, 0.1)
                assert store_status(config)["disk_full"] == ""
                assert raft.disk_full_reports[-1] == ""
                done = call(config, WaitApplied(id=6, index=51, term=1))
                assert isinstance(done, AppliedResult), done
                assert count_rows(config, min_applied=51) == 50
                assert proc.poll() is None
        finally:
            if proc is not None:
                proc.kill()
                stderr = proc.communicate()[1].decode(errors="replace")
                assert "Traceback" not in stderr, stderr
        conn = apsw.Connection(str(config.db_path))
        try:
            assert conn.execute("PRAGMA integrity_check").get == "ok"
            assert conn.execute("SELECT count(*) FROM t").get == 50
        finally:
            conn.close()
