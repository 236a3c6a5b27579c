"""Committed proposals per second on a 3-node raft-only cluster on loopback.

Opt-in (ZRAFT_BENCH=1): `ZRAFT_BENCH=1 pytest -s tests/component/test_raft_proc_bench.py`.
One client keeps `window` proposals outstanding on the leader; a proposal counts once
FetchEntries from the leader shows it committed (the way the store process learns it), with
CommitNotices on the leader's PUB as the wake-up.
"""

from __future__ import annotations

import os
import time

import pytest
import zmq

from tests.component.test_raft_proc_support import Cluster, Node, notice_subscriber
from zraft.wire.messages import EntriesReply, FetchEntries, Propose, Proposed

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.environ.get("ZRAFT_BENCH"), reason="set ZRAFT_BENCH=1 to run")]


def committed_per_second(leader: Node, sub: zmq.Socket[bytes], window: int, total: int,
                         payload: bytes = b"x" * 100) -> float:
    rpc = leader.rpc()
    poller = zmq.Poller()
    poller.register(rpc.socket, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    sent = done = commit = 0
    proposing: set[int] = set()
    uncommitted: list[int] = []
    fetch_id = 0
    want_fetch = False
    started = time.perf_counter()
    while done < total:
        while len(proposing) + len(uncommitted) < window and sent < total:
            proposing.add(rpc.send(Propose(0, payload)))
            sent += 1
        if want_fetch and not fetch_id and uncommitted:
            fetch_id = rpc.send(FetchEntries(0, min(uncommitted), 64 << 10))
            want_fetch = False
        events = dict(poller.poll(2000))
        assert events, "no progress for 2 s"
        if sub in events:
            while sub.poll(0):
                sub.recv_multipart()
            want_fetch = True
        while (reply := rpc.recv(0)) is not None:
            if isinstance(reply, Proposed):
                proposing.discard(reply.id)
                uncommitted.append(reply.index)
                want_fetch = True
            elif isinstance(reply, EntriesReply) and reply.id == fetch_id:
                fetch_id = 0
                commit = max(commit, reply.commit)
                before = len(uncommitted)
                uncommitted = [i for i in uncommitted if i > commit]
                done += before - len(uncommitted)
            else:
                raise AssertionError(reply)
    return total / (time.perf_counter() - started)


def test_committed_proposals_per_second(tmp_path):
    cluster = Cluster(tmp_path, 3, tick_ms=50)
    cluster.start()
    ctx = zmq.Context()
    try:
        leader = cluster.leader()
        sub = notice_subscriber(ctx, leader)
        time.sleep(0.3)  # let the SUB join; the figures are all that matter here
        committed_per_second(leader, sub, 1, 100)  # warm-up
        sequential = committed_per_second(leader, sub, 1, 1000)
        pipelined = committed_per_second(leader, sub, 64, 20_000)
        print(f"\n3-node raft-only, 100 B proposals: sequential {sequential:,.0f}/s "
              f"({1000 / sequential:.2f} ms each), 64 in flight {pipelined:,.0f}/s")
        assert sequential > 50 and pipelined > sequential
    finally:
        ctx.destroy(linger=0)
        cluster.stop()
