"""A raft process whose log has a flipped bit in synced data: it moves the damaged log aside,
starts from the salvaged prefix with a vote floor, and catches up from the leader. A node that
is the only voter cannot be recovered that way and still refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.component.test_raft_proc_support import Cluster, Node, single_node, wait_for
from zraft.logstore.records import FRAME_HEADER, RecordType, decode_entry_head
from zraft.logstore.segment import list_segments, scan_segment
from zraft.wire.messages import Propose, Proposed

pytestmark = pytest.mark.timeout(90)


def propose(node: Node, data: bytes) -> int:
    reply = node.call(Propose(0, data))
    assert isinstance(reply, Proposed), reply
    return reply.index


def flip_entry(log_dir: Path, index: int) -> None:
    """Flip one bit in the data of entry `index`, in the synced body of the log."""
    for seq, path in list_segments(log_dir):
        scan = scan_segment(seq, path, is_last=True)
        for frame in scan.frames:
            if frame.rtype == RecordType.ENTRY and decode_entry_head(frame.payload(scan.data)).index == index:
                at = frame.offset + FRAME_HEADER.size + 17 + 3  # inside the entry's data
                with open(path, "r+b") as f:
                    f.seek(at)
                    byte = f.read(1)
                    f.seek(at)
                    f.write(bytes([byte[0] ^ 0x04]))
                return
    raise AssertionError(f"entry {index} not found in {log_dir}")


def test_follower_with_a_flipped_bit_salvages_and_catches_up(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    try:
        leader = cluster.leader()
        last = 0
        for i in range(40):
            last = propose(leader, b"value-%03d" % i)
        follower = next(n for n in cluster.nodes if n is not leader)
        wait_for("the follower to hold everything",
                 lambda: (follower.status() or {}).get("commit", 0) >= last, 15)
        assert follower.terminate() == 0
        flip_entry(follower.config.log_dir, 10)
        more = [propose(leader, b"while-away-%d" % i) for i in range(5)]
        follower.start()
        status = wait_for("the follower to catch up", lambda: (
            (s := follower.status()) and s["commit"] >= more[-1] and s["vote_floor"] == [0, 0] and s), 30)
        assert status["last_index"] >= more[-1]
        text = follower.log_text()
        assert "damage in synced data" in text and "salvaged the damaged raft log" in text, text
        assert "reached the vote floor" in text, text
        aside = follower.config.data_dir / "raft.corrupt-1"
        assert aside.is_dir() and list_segments(aside)
        mine = follower.fetch(1, 1 << 22).entries
        theirs = leader.fetch(1, 1 << 22).entries
        n = min(len(mine), len(theirs))
        assert n >= more[-1] and [e.data for e in mine[:n]] == [e.data for e in theirs[:n]]
        assert propose(cluster.leader(), b"after") > more[-1]
    finally:
        cluster.stop()
        print(cluster.logs())


def test_the_only_voter_still_refuses_to_start(tmp_path: Path) -> None:
    node = single_node(tmp_path)
    node.start()
    try:
        wait_for("the single node to lead", lambda: (node.status() or {}).get("role") == "leader")
        for i in range(30):
            last = propose(node, b"y" * 100)
        wait_for("commit", lambda: (node.status() or {}).get("commit", 0) >= last)
        assert node.terminate() == 0
        flip_entry(node.config.log_dir, 12)
        node.start()
        assert node.proc is not None and node.proc.wait(15) != 0
        text = node.log_text()
        assert "only voter" in text and "operator must replace" in text, text
        assert not (node.config.data_dir / "raft.corrupt-1").exists()
    finally:
        node.kill()
