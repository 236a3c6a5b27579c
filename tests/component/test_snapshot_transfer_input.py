"""Snapshot transfer messages are peer input like any other (issue 10's rule, issue 11's
messages): pulls with impossible offsets or sizes, chunks nobody asked for, and SNAPs that would
start a pull from a peer with no store behind it neither end a raft process nor stop the
cluster committing. Raft-only cluster: no store answers, so relays and pulls also time out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.component.test_peer_fuzz_support import FuzzPeer
from tests.component.test_raft_proc_support import Cluster, wait_for
from zraft.raft import ConfState, Message, MsgType, SnapshotMeta
from zraft.wire.codec import encode
from zraft.wire.messages import Propose, Proposed, SnapshotChunk, SnapshotPull

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "raft3", 3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def hostile(me: int, frm: int, term: int) -> list[list[bytes]]:
    pulls = [SnapshotPull(1, frm, me, session, 1, offset, size)
             for session, offset, size in [(1, 0, 1 << 20), (2, -5, 100), (3, 1 << 61, 1 << 40), (4, 0, -1),
                                           (0, 0, 0), ((1 << 63) - 1, 7, 1)]]
    chunks = [SnapshotChunk(2, frm, me, session, offset, size, 9, data)
              for session, offset, size, data in [(1, 0, 10, b"x" * 10), (5, -1, 3, b"abc"), (6, 0, 0, b""),
                                                  (7, 100, 10, b"too far"), (8, 0, 2, b"longer than size")]]
    snaps = [Message(MsgType.SNAP, to=me, frm=frm, term=term,
                     snapshot=SnapshotMeta(index, max(term, 1), ConfState((1, 2, 3))))
             for index in (1, 10_000, 1 << 40)]
    return [encode(m) for m in (*pulls, *chunks, *snaps)]


def test_hostile_snapshot_messages_neither_kill_nor_stall(cluster: Cluster) -> None:
    leader = wait_for("a leader", cluster.leader, 15)
    pids = {n.id: n.proc.pid for n in cluster.nodes if n.proc is not None}
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        for node in cluster.nodes:
            status = node.status() or {}
            for frm in (7, next(n.id for n in cluster.nodes if n.id != node.id)):
                peer = FuzzPeer(ctx, node.config.me().raft, str(frm).encode())
                for frames in hostile(node.id, frm, int(status.get("term", 1))):
                    peer.send(frames)
                peer.close(linger_ms=500)
        def all_read() -> list[dict[str, int]] | None:
            """Every node's counters once each has read the stray chunks (the input arrived)."""
            stats = [(n.status() or {}).get("stats", {}) for n in cluster.nodes]
            return stats if all(s.get("snapshot_stray_chunks", 0) >= 5 for s in stats) else None

        stats = wait_for("every node to read the input", all_read, 15)
        for node in cluster.nodes:
            assert node.alive() and node.proc is not None and node.proc.pid == pids[node.id], node.log_text()[-3000:]
        assert sum(s.get("snapshot_pulls_started", 0) for s in stats) >= 1, stats  # a SNAP started a pull
        leader = wait_for("a leader after the input", cluster.leader, 15)
        reply = leader.call(Propose(0, b"after"))
        assert isinstance(reply, Proposed), reply
        wait_for("the write to commit", lambda: (r := leader.fetch(reply.index)).entries and r, 15)
    finally:
        ctx.destroy(linger=0)
