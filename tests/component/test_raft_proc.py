"""The raft process on its own: 3-node raft-only clusters of real subprocesses on 127.0.0.1,
driven through the local RPC socket and watched on the PUB socket.

The module-scoped cluster is shared by the tests in file order (a write, then reads, then a
leader crash, then a clean stop); the last tests use clusters of their own."""

from __future__ import annotations

import socket
import time

import pytest
import zmq

from tests.component.test_raft_proc_support import (
    Cluster,
    Node,
    make_configs,
    notice_subscriber,
    recv_notice,
    single_node,
    wait_for,
)
from zraft.logstore import FileLogStore
from zraft.raft.types import ConfState, SnapshotMeta
from zraft.wire.messages import (
    CommitNotice,
    ConfChangeRequest,
    EntriesReply,
    Error,
    FetchEntries,
    Ok,
    Propose,
    Proposed,
    ReadIndex,
    ReadIndexReply,
    TransferLeader,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("raft3"), 3)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        print(c.logs())  # shown only when something failed


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def propose(node: Node, data: bytes) -> Proposed:
    reply = node.call(Propose(0, data))
    assert isinstance(reply, Proposed), reply
    return reply


def wait_committed(node: Node, index: int, timeout: float = 10.0) -> EntriesReply:
    """FetchEntries from `index` until the entry shows up (committed and durable there)."""
    return wait_for(f"entry {index} on node {node.id}",
                    lambda: (r := node.fetch(index)).entries and r, timeout)


def test_a_leader_is_elected(cluster):
    leader = cluster.leader()
    status = leader.status()
    assert status is not None
    assert status["role"] == "leader" and status["voters"] == [1, 2, 3] and status["term"] >= 1
    for key in ("node_id", "term", "leader", "commit", "last_index", "learners", "epoch"):
        assert key in status
    # nothing compacted yet; the log's files (one preallocated segment at least) are counted
    assert (status["snapshot_index"], status["snapshot_term"]) == (0, 0)
    assert status["log_bytes"] >= sum(p.stat().st_size for p in leader.config.log_dir.glob("*.seg")) > 0


def test_propose_on_leader_and_follower(cluster):
    leader = cluster.leader()
    reply = propose(leader, b"first")
    assert reply.index >= 2 and reply.term == leader.status()["term"]  # type: ignore[index]
    for follower in (n for n in cluster.nodes if n is not leader):
        err = follower.call(Propose(0, b"nope"))
        assert isinstance(err, Error) and err.code == "not_leader" and err.leader == leader.id


def test_fetch_entries_converges_on_every_node(cluster):
    leader = cluster.leader()
    indexes = [propose(leader, f"v{i}".encode()).index for i in range(20)]
    logs = []
    for node in cluster.nodes:
        wait_committed(node, indexes[-1])
        entries = []
        while True:
            reply = node.fetch(len(entries) + 1, max_bytes=200)  # small pages: paging works
            assert reply.commit >= indexes[-1]
            if not reply.entries:
                break
            entries += reply.entries
        logs.append([(e.index, e.term, e.data) for e in entries])
    assert logs[0] == logs[1] == logs[2]
    assert [d for (i, _, d) in logs[0] if i in indexes] == [f"v{i}".encode() for i in range(20)]

    beyond = leader.fetch(logs[0][-1][0] + 1)
    assert beyond.entries == [] and beyond.commit == logs[0][-1][0]
    bad = leader.call(FetchEntries(0, 0))
    assert isinstance(bad, Error) and bad.code == "bad_request"


def test_commit_notices_are_published(cluster, ctx):
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    subs = {n.id: notice_subscriber(ctx, n) for n in (leader, follower)}
    for node_id, sub in subs.items():  # heartbeats come even when nothing changes
        first = recv_notice(sub, 2.0)
        second = recv_notice(sub, 1.0)
        assert first is not None and second is not None
        assert second.epoch == first.epoch and second.seq > first.seq
    index = propose(leader, b"noticed").index

    def saw_commit(sub: zmq.Socket[bytes]) -> CommitNotice | None:
        notice = recv_notice(sub, 0.5)
        return notice if notice is not None and notice.commit >= index else None

    for sub in subs.values():
        notice = wait_for("a notice of the commit", lambda: saw_commit(sub), 5)
        assert notice.leader == leader.id and notice.term >= 1


def test_read_index_covers_preceding_writes(cluster):
    leader = cluster.leader()
    for node in cluster.nodes:
        index = propose(leader, f"before read on {node.id}".encode()).index
        wait_committed(leader, index)
        reply = node.call(ReadIndex(0), timeout=5)
        assert isinstance(reply, ReadIndexReply), reply
        assert reply.index >= index


def test_membership_and_transfer_requests_are_answered(cluster):
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    err = follower.call(TransferLeader(0, leader.id))
    assert isinstance(err, Error) and err.code == "not_leader"
    err = leader.call(ConfChangeRequest(0, "add_voter", 9))
    assert isinstance(err, Error) and err.code == "bad_request"  # no address for node 9
    err = leader.call(ConfChangeRequest(0, "add_voter", leader.id))
    assert isinstance(err, Error) and err.code == "bad_request" and "already a voter" in err.message
    err = leader.call(ConfChangeRequest(0, "remove", 9))
    assert isinstance(err, Error) and err.code == "bad_request" and "not a member" in err.message
    ok = leader.call(TransferLeader(0, follower.id))
    assert isinstance(ok, Ok), ok
    new = cluster.leader(exclude=leader.id)
    assert new.id == follower.id


def test_kill_leader_then_restart_catches_up(cluster):
    leader = cluster.leader()
    last = propose(leader, b"before crash").index
    wait_committed(leader, last)
    leader.kill()
    started = time.monotonic()
    new_leader = cluster.leader(timeout=10)
    elapsed = time.monotonic() - started
    assert new_leader.id != leader.id and elapsed < 5, elapsed
    after = propose(new_leader, b"after crash").index
    assert after > last
    wait_committed(new_leader, after)

    leader.start()
    reply = wait_committed(leader, after, timeout=15)
    assert reply.entries[0].data == b"after crash"
    assert leader.fetch(last).entries[0].data == b"before crash"


def test_sigterm_exits_zero(cluster):
    cluster.leader()
    for node in cluster.nodes:
        assert node.terminate() == 0
        assert "stopping on signal" in node.log_text()


# == clusters of their own ====================================================================
def test_busy_when_too_many_proposals_are_uncommitted(tmp_path):
    # Once both followers die, nothing commits and proposals pile up. (All three start: a new
    # cluster's blank nodes vote only once every voter has told them its state.)
    c = Cluster(tmp_path, 3, tick_ms=50, max_pending_proposals=5)
    for node in c.nodes:
        node.start()
    try:
        leader = wait_for("a leader", lambda: next(
            (n for n in c.nodes if (n.status() or {}).get("role") == "leader"), None), 10)
        wait_committed(leader, 1)
        for node in c.nodes:
            if node is not leader:
                node.kill()
        replies = [leader.call(Propose(0, b"x")) for _ in range(6)]
        assert all(isinstance(r, Proposed) for r in replies[:5]), replies
        assert isinstance(replies[5], Error) and replies[5].code == "busy", replies[5]
    finally:
        c.stop()


def test_a_read_index_without_a_leader_says_leader_not_found(tmp_path):
    """One node of three alone has no leader: a linearizable read point is refused with
    rqlite's words (the api answers 503 "leader not found"), not "no known leader"."""
    c = Cluster(tmp_path, 3, tick_ms=50)
    c.nodes[0].start()
    try:
        wait_for("the node to serve", lambda: c.nodes[0].status() is not None)
        reply = c.nodes[0].call(ReadIndex(0), timeout=5)
        assert isinstance(reply, Error) and (reply.code, reply.message) == ("not_leader", "leader not found")
    finally:
        c.stop()


def test_fetch_below_the_log_start_is_compacted(tmp_path):
    node = single_node(tmp_path)
    store = FileLogStore(node.config.log_dir)
    store.load()
    store.apply_snapshot(SnapshotMeta(index=5, term=1, conf=ConfState(voters=(1,))))
    store.close()
    node.start()
    try:
        wait_for("the single node to lead", lambda: (node.status() or {}).get("role") == "leader")
        index = propose(node, b"after snapshot").index
        assert index > 6
        err = node.call(FetchEntries(0, 3))
        assert isinstance(err, Error) and err.code == "compacted"
        assert wait_committed(node, index).entries[0].data == b"after snapshot"
    finally:
        node.kill()


def test_bind_failure_is_fatal(tmp_path):
    config = make_configs(tmp_path, 1)[0]
    host, port = config.me().raft.removeprefix("tcp://").split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        node = Node(config)
        node.start()
        assert node.proc is not None
        try:
            assert node.proc.wait(15) != 0
        finally:
            node.kill()
    assert "cannot bind" in node.log_text()


def test_log_corruption_is_fatal(tmp_path):
    node = single_node(tmp_path)
    node.start()
    try:
        wait_for("the single node to lead", lambda: (node.status() or {}).get("role") == "leader")
        index = 0
        for i in range(30):
            index = propose(node, b"y" * 100).index
        wait_committed(node, index)
        assert node.terminate() == 0
        segment = sorted(node.config.log_dir.glob("*.seg"))[0]
        with open(segment, "r+b") as f:  # flip a byte in the middle of acknowledged records
            f.seek(2000)
            byte = f.read(1)
            f.seek(2000)
            f.write(bytes([byte[0] ^ 0xFF]))
        node.start()
        assert node.proc is not None
        assert node.proc.wait(15) != 0
        assert "LogCorruptError" in node.log_text()
    finally:
        node.kill()
