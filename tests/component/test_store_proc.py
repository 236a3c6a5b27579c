"""The store process against a fake raft process: it applies what is committed, answers waits
and queries, survives lost notices and malformed requests, and resumes exactly after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import zmq

from tests.component.fakes import FakeRaft
from zraft.config import NodeConfig, Peer, render
from zraft.procs.store_proc import StoreProcess
from zraft.raft.types import Entry, EntryKind
from zraft.store.command import Command, Statement, encode_command
from zraft.wire import decode, encode
from zraft.wire.messages import (
    AppliedResult,
    CommitNotice,
    Error,
    Query,
    QueryResult,
    StoreStatus,
    StatusRequest,
    WaitApplied,
    WireMessage,
)


def make_config(tmp_path: Path) -> tuple[NodeConfig, Path]:
    data = tmp_path / "n1"
    data.mkdir()
    peer = Peer(1, "tcp://127.0.0.1:1", "127.0.0.1:2", "tcp://127.0.0.1:3")
    config = NodeConfig(id=1, data_dir=data, peers=(peer,), raft_rpc=f"ipc://{data}/raft.sock",
                        raft_pub=f"ipc://{data}/raft-pub.sock", store_rpc=f"ipc://{data}/store.sock",
                        store_pub=f"ipc://{data}/store-pub.sock")
    path = data / "zraft.toml"
    path.write_text(render(config))
    return config, path


def start_store(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "zraft", "run", "store", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[NodeConfig, Path, list[subprocess.Popen[bytes]]]]:
    config, path = make_config(tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    yield config, path, procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def insert_entries(start: int, count: int, term: int = 1) -> list[Entry]:
    out = []
    for i in range(start, start + count):
        cmd = Command([Statement("INSERT INTO t(v) VALUES(?)", [f"row{i}"])], transaction=False)
        out.append(Entry(term, i, EntryKind.NORMAL, encode_command(cmd)))
    return out


def create_entry(index: int) -> Entry:
    cmd = Command([Statement("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", None)], transaction=False)
    return Entry(1, index, EntryKind.NORMAL, encode_command(cmd))


def call(config: NodeConfig, msg: WireMessage, timeout_s: float = 10) -> WireMessage:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(config.store_rpc)
    try:
        sock.send_multipart(encode(msg))
        assert sock.poll(int(timeout_s * 1000)), f"no reply to {msg}"
        reply = decode(sock.recv_multipart())
        assert isinstance(reply, WireMessage)
        return reply
    finally:
        sock.close()


def count_rows(config: NodeConfig, min_applied: int) -> int:
    reply = call(config, Query(id=1, statements=[Statement("SELECT count(*) FROM t")], min_applied=min_applied))
    assert isinstance(reply, QueryResult), reply
    return int(reply.results[0]["values"][0][0])


def test_applies_committed_entries_without_any_notice(node) -> None:
    """Notices are hints: with none at all, periodic fetching still applies everything."""
    config, path, procs = node
    with FakeRaft(config, publish=False) as raft:
        raft.commit_entries([Entry(1, 1, EntryKind.NORMAL, b""), create_entry(2), *insert_entries(3, 500)])
        procs.append(start_store(path))
        assert count_rows(config, min_applied=502) == 500


def test_tiny_hwm_and_late_subscriber_converge(node) -> None:
    """A PUB with HWM 1 drops most notices, and the store subscribes late: still converges."""
    config, path, procs = node
    with FakeRaft(config, publish=True, sndhwm=1) as raft:
        raft.commit_entries([create_entry(1), *insert_entries(2, 100)])
        time.sleep(0.2)
        procs.append(start_store(path))
        for batch in range(5):
            raft.commit_entries(insert_entries(102 + batch * 100, 100))
        assert count_rows(config, min_applied=601) == 600


def test_wait_applied_returns_the_entry_result_or_leadership_lost(node) -> None:
    config, path, procs = node
    with FakeRaft(config) as raft:
        raft.commit_entries([create_entry(1), *insert_entries(2, 3, term=2)])
        procs.append(start_store(path))
        reply = call(config, WaitApplied(id=5, index=3, term=2))
        assert isinstance(reply, AppliedResult) and reply.result == [{"last_insert_id": 2, "rows_affected": 1}]
        lost = call(config, WaitApplied(id=6, index=3, term=1))
        assert isinstance(lost, Error) and lost.code == "leadership_lost"
        late = call(config, WaitApplied(id=7, index=99, term=2, timeout_ms=200))
        assert isinstance(late, Error) and late.code == "timeout"


def test_malformed_requests_are_dropped_and_the_store_keeps_serving(node) -> None:
    config, path, procs = node
    with FakeRaft(config) as raft:
        raft.commit_entries([create_entry(1), *insert_entries(2, 2)])
        procs.append(start_store(path))
        assert count_rows(config, 3) == 2
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(config.store_rpc)
        for junk in ([b"{"], [b"\xff\xfe"], [b'{"v":1,"k":"query","id":1,"statements":5}'], [b""] * 3):
            sock.send_multipart(junk)
        sock.close(linger=500)
        assert count_rows(config, 3) == 2
        assert procs[0].poll() is None


def test_kill_9_during_apply_then_resume_is_exact(node) -> None:
    config, path, procs = node
    total = 3000
    with FakeRaft(config, publish=False) as raft:
        raft.commit_entries([create_entry(1), *insert_entries(2, total)])
        for _ in range(3):
            proc = start_store(path)
            procs.append(proc)
            time.sleep(0.3 + 0.2 * len(procs))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        procs.append(start_store(path))
        assert count_rows(config, min_applied=total + 1) == total
        reply = call(config, Query(id=2, statements=[Statement("SELECT count(DISTINCT v), min(id), max(id) FROM t")],
                                   min_applied=total + 1))
        assert isinstance(reply, QueryResult)
        assert reply.results[0]["values"][0] == [total, 1, total]


def test_sigterm_exits_zero(node) -> None:
    config, path, procs = node
    with FakeRaft(config):
        proc = start_store(path)
        procs.append(proc)
        call(config, Query(id=1, statements=[Statement("SELECT 1")]))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def store_status(config: NodeConfig) -> dict[str, object]:
    reply = call(config, StatusRequest(id=9))
    assert isinstance(reply, StoreStatus), reply
    return asdict(reply)


def wait_status(config: NodeConfig, ok: Callable[[dict[str, object]], bool],
                timeout_s: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = store_status(config)
        if ok(status):
            return status
        assert time.monotonic() < deadline, f"store status never matched: {status}"
        time.sleep(0.02)


def test_lag_grows_while_a_known_commit_is_unapplied_and_is_zero_once_caught_up(node) -> None:
    """freshness_strict's input: lag_ms counts while the store knows of commits it has not
    applied, and is 0 again (not merely smaller) once it has applied them."""
    config, path, procs = node
    with FakeRaft(config) as raft:
        raft.commit_entries([create_entry(1), *insert_entries(2, 2)])
        procs.append(start_store(path))
        assert count_rows(config, 3) == 2
        status = wait_status(config, lambda s: s["known_commit"] == 3)
        assert status["applied"] == 3 and status["lag_ms"] == 0
        raft.announce_commit(10)  # committed, but the store cannot fetch 4..10 yet
        wait_status(config, lambda s: s["known_commit"] == 10)
        time.sleep(0.3)
        first = store_status(config)
        assert first["applied"] == 3
        assert isinstance(first["lag_ms"], int) and first["lag_ms"] >= 300
        time.sleep(0.2)
        second = store_status(config)
        assert isinstance(second["lag_ms"], int) and second["lag_ms"] >= first["lag_ms"] + 200
        raft.commit_entries(insert_entries(4, 7))
        assert count_rows(config, 10) == 9
        status = store_status(config)
        assert (status["applied"], status["lag_ms"]) == (10, 0)


def test_lag_is_unknown_when_the_store_starts_behind(node) -> None:
    """A store that restarts behind the commit index cannot say how old its data is: lag_ms is
    None (a strict read refuses it) until it has caught up."""
    config, path, procs = node
    with FakeRaft(config) as raft:
        raft.announce_commit(3)
        procs.append(start_store(path))
        status = wait_status(config, lambda s: s["known_commit"] == 3)
        assert status["applied"] == 0 and status["lag_ms"] is None
        raft.commit_entries([create_entry(1), *insert_entries(2, 2)])
        assert count_rows(config, 3) == 2
        assert store_status(config)["lag_ms"] == 0


def test_lag_counts_from_before_a_backlog_of_notices_was_read(tmp_path: Path) -> None:
    """A store stalled for 5 s then reads a backlog of notices at once: their commits may have
    happened early in the stall, so the lag counts from the last moment the raft commit is
    known to have been the applied one (the SUB queue was empty, then a notice said 0), not
    from when the backlog was read (about 0 lag, which would let a strict read through)."""
    config, _ = make_config(tmp_path)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    proc = StoreProcess(config, ctx)
    try:
        proc._sub_empty_at = 100.0
        proc._on_notice(CommitNotice(epoch=1, seq=1, commit=0, term=1, leader=1))  # caught up
        proc._sub_empty_at = 100.1  # ... a 5 s stall; the backlog is read at 105.1
        for seq, commit in ((2, 3), (3, 7)):
            proc._on_notice(CommitNotice(epoch=1, seq=seq, commit=commit, term=1, leader=1))
        assert proc.fetcher.lag.known_commit == 7
        assert 5100 <= proc.fetcher.lag.lag_ms(105.1) <= 5101  # from 100.0, when the raft commit was 0
        proc._sub_empty_at = 105.1
        proc._on_notice(CommitNotice(epoch=1, seq=4, commit=9, term=1, leader=1))
        assert 5200 <= proc.fetcher.lag.lag_ms(105.2) <= 5201  # the oldest unapplied commit still counts
    finally:
        proc.close()
        ctx.term()
