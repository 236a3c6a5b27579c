"""The raft process on a full disk: writes are refused at once with "disk full: ...", the
process stays up (same PID), nothing committed is lost, the rest of the cluster keeps
committing, and writes succeed again soon after space returns."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.component.disk_full_support import inflate_balloon, small_tmpfs
from tests.component.test_raft_proc_support import Cluster, Node, make_configs, wait_for
from zraft.wire.messages import EntriesReply, Error, FetchEntries, Propose, Proposed, TransferLeader, WireMessage

pytestmark = pytest.mark.timeout(60)

SEGMENT = 64 * 1024  # small, so that the log must start a new segment soon after the disk fills
PAYLOAD = b"x" * 2000


def small_segments(node: Node) -> Node:
    node.config = replace(node.config, raft=replace(node.config.raft, segment_bytes=SEGMENT))
    return node


def propose_until_refused(node: Node, limit: int = 200) -> tuple[list[Proposed], Error, float]:
    """Propose until the node refuses; returns what it took, the refusal and its latency."""
    taken: list[Proposed] = []
    for _ in range(limit):
        start = time.monotonic()
        reply = node.call(Propose(0, PAYLOAD + b"%d" % len(taken)), 5.0)
        if isinstance(reply, Error):
            return taken, reply, time.monotonic() - start
        assert isinstance(reply, Proposed), reply
        taken.append(reply)
    raise AssertionError(f"node {node.id} took {limit} proposals on a full disk")


def all_entries(node: Node) -> dict[int, bytes]:
    """Every committed entry this node serves, by index."""
    out: dict[int, bytes] = {}
    while True:
        reply = node.call(FetchEntries(0, len(out) + 1, 1 << 20))
        assert isinstance(reply, EntriesReply), reply
        if not reply.entries:
            return out
        out.update((e.index, e.data) for e in reply.entries)


def proposal_commits(node: Node) -> bool:
    reply: WireMessage = node.call(Propose(0, b"after"), 2.0)
    if not isinstance(reply, Proposed):
        return False
    wait_for(f"entry {reply.index} committed", lambda: node.call(FetchEntries(0, reply.index, 100)).entries, 10)
    return True


def healthy_leader(cluster: Cluster) -> Node | None:
    """The leader nodes 2 and 3 agree on (node 1, sitting out, knows of no leader)."""
    statuses = [cluster.node(i).status(0.5) or {} for i in (2, 3)]
    leaders = {s.get("leader") for s in statuses}
    if len(leaders) == 1 and (found := leaders.pop()) in (2, 3):
        return cluster.node(found)
    return None


def test_single_node_refuses_writes_then_recovers_by_itself(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    with small_tmpfs(root):
        node = small_segments(Node(make_configs(root, 1)[0]))
        node.start()
        try:
            wait_for("a leader", lambda: (node.status() or {}).get("role") == "leader")
            assert node.proc is not None
            pid = node.proc.pid
            before = all_entries(node)
            balloon = inflate_balloon(root)
            taken, refusal, latency = propose_until_refused(node)
            assert refusal.code == "disk_full", refusal
            assert refusal.message.startswith("disk full: ") and str(node.config.log_dir) in refusal.message
            assert latency < 1.0
            again = node.call(Propose(0, b"y"), 2.0)  # still refused, still at once
            assert isinstance(again, Error) and again.code == "disk_full"
            status = node.status()
            assert status is not None and status["disk_full"].startswith("disk full: ")
            assert node.alive() and node.proc.pid == pid
            committed = all_entries(node)
            assert before.items() <= committed.items()

            os.unlink(balloon)
            start = time.monotonic()
            wait_for("a proposal to commit after space returned", lambda: proposal_commits(node), 10, 0.1)
            assert time.monotonic() - start < 10
            assert node.alive() and node.proc.pid == pid
            assert (node.status() or {}).get("disk_full") == ""
            after = all_entries(node)
            assert committed.items() <= after.items()  # nothing committed was lost
            assert "Traceback" not in node.log_text()
        finally:
            node.kill()
        node.start()  # and the log it left behind loads
        try:
            wait_for("the restarted node to lead", lambda: (node.status() or {}).get("role") == "leader")
            assert after.items() <= all_entries(node).items()
        finally:
            node.kill()


def test_full_leader_hands_over_and_the_majority_keeps_committing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    full = small_segments(cluster.node(1))
    with small_tmpfs(full.config.data_dir):
        try:
            cluster.start()
            leader = cluster.leader()
            if leader.id != 1:
                leader.call(TransferLeader(0, 1))
                leader = wait_for("node 1 to lead", lambda: (found := cluster.leader()).id == 1 and found)
            assert full.proc is not None
            pid = full.proc.pid
            balloon = inflate_balloon(full.config.data_dir)
            taken, refusal, _ = propose_until_refused(full)
            assert refusal.code == "disk_full", refusal

            healthy = wait_for("a leader among the nodes with space", lambda: healthy_leader(cluster), 10)
            assert wait_for("a write on the healthy majority", lambda: proposal_commits(healthy), 10)
            committed = all_entries(healthy)
            assert len(committed) >= len(taken)
            assert full.alive() and full.proc.pid == pid

            os.unlink(balloon)
            last = max(committed)
            wait_for("node 1 to catch up", lambda: last in all_entries(full), 10, 0.1)
            assert all_entries(full).items() >= committed.items()
            assert full.alive() and full.proc.pid == pid
        finally:
            cluster.stop()
            print(cluster.logs())


def test_leader_whose_store_cannot_apply_hands_leadership_over(tmp_path: Path) -> None:
    """The store's report (FetchEntries.disk_full) makes the leader refuse writes and transfer
    leadership; once the reports stop saying so, the node may lead again."""
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    try:
        leader = cluster.leader()
        leader.call(FetchEntries(0, 1, 100, disk_full="disk full: /somewhere/db.sqlite"))
        refusal = leader.call(Propose(0, b"z"))
        assert isinstance(refusal, Error) and refusal.code == "disk_full", refusal
        assert "disk full: /somewhere/db.sqlite" in refusal.message
        successor = cluster.leader(timeout=5, exclude=leader.id)
        assert proposal_commits(successor)
        leader.call(FetchEntries(0, 1, 100))  # the store applies again
        assert (leader.status() or {}).get("disk_full") == ""
        successor.call(TransferLeader(0, leader.id))
        assert wait_for("the old leader to lead again", lambda: cluster.leader().id == leader.id, 10)
    finally:
        cluster.stop()
        print(cluster.logs())
