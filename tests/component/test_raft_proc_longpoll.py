"""Long-poll FetchEntries on a real single-node raft process: a fetch beyond the commit with
wait_ms is held and answered as soon as the commit reaches it, or empty when the wait ends;
without wait_ms it is answered at once, as before."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from tests.component.test_raft_proc_support import Node, single_leader_node, wait_for  # noqa: F401 (fixture "node")
from zraft.wire import decode, encode
from zraft.wire.messages import EntriesReply, FetchEntries, Propose, Proposed

pytestmark = pytest.mark.timeout(60)



@pytest.fixture
def dealer(node: Node) -> Iterator[zmq.Socket[bytes]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.config.raft_rpc)
    yield sock
    ctx.destroy(linger=0)


def recv(sock: zmq.Socket[bytes], timeout_s: float) -> EntriesReply | None:
    if not sock.poll(int(timeout_s * 1000)):
        return None
    reply = decode(sock.recv_multipart())
    assert isinstance(reply, EntriesReply), reply
    return reply


def next_index(node: Node) -> int:
    status = node.status()
    assert status is not None
    return int(status["commit"]) + 1


def test_a_held_fetch_is_answered_when_the_commit_reaches_it(node, dealer):
    start = next_index(node)
    dealer.send_multipart(encode(FetchEntries(1, start, wait_ms=5000)))
    assert recv(dealer, 0.3) is None  # held: nothing beyond the commit yet
    proposed = node.call(Propose(0, b"long poll"))
    assert isinstance(proposed, Proposed) and proposed.index == start
    reply = recv(dealer, 2.0)
    assert reply is not None and reply.id == 1
    assert [e.data for e in reply.entries] == [b"long poll"] and reply.commit == start


def test_a_held_fetch_ends_empty_after_its_wait(node, dealer):
    start = next_index(node)
    began = time.monotonic()
    dealer.send_multipart(encode(FetchEntries(2, start, wait_ms=300)))
    reply = recv(dealer, 3.0)
    assert reply is not None and reply.id == 2 and reply.entries == [] and reply.commit == start - 1
    assert 0.25 <= time.monotonic() - began < 2.0


def test_without_wait_a_fetch_beyond_the_commit_is_answered_at_once(node, dealer):
    start = next_index(node)
    dealer.send_multipart(encode(FetchEntries(3, start)))
    reply = recv(dealer, 1.0)
    assert reply is not None and reply.id == 3 and reply.entries == []


def test_held_fetches_are_bounded(node, dealer):
    from zraft.procs.entry_server import MAX_PARKED_FETCHES

    start = next_index(node)
    ctx = zmq.Context()
    try:
        socks = []
        for i in range(MAX_PARKED_FETCHES + 3):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(node.config.raft_rpc)
            sock.send_multipart(encode(FetchEntries(100 + i, start, wait_ms=5000)))
            socks.append(sock)
            if i < MAX_PARKED_FETCHES:
                assert recv(sock, 0.05) is None
            else:  # beyond the bound: answered at once
                reply = recv(sock, 1.0)
                assert reply is not None and reply.entries == []
        node.call(Propose(0, b"wake all"))
        for sock in socks[:MAX_PARKED_FETCHES]:
            reply = recv(sock, 2.0)
            assert reply is not None and [e.data for e in reply.entries] == [b"wake all"]
    finally:
        ctx.destroy(linger=0)


def test_a_lingering_fetch_gathers_commits_and_a_newer_fetch_replaces_it(node, dealer):
    start = next_index(node)
    dealer.send_multipart(encode(FetchEntries(5, start, wait_ms=5000, linger_ms=400)))
    began = time.monotonic()
    for i in range(3):
        node.call(Propose(0, f"batch {i}".encode()))
    reply = recv(dealer, 3.0)
    assert reply is not None and reply.id == 5 and len(reply.entries) == 3
    assert time.monotonic() - began >= 0.3  # held for the linger although committed at once

    dealer.send_multipart(encode(FetchEntries(6, start + 3, wait_ms=5000, linger_ms=2000)))
    node.call(Propose(0, b"eager"))
    assert recv(dealer, 0.2) is None  # lingering
    dealer.send_multipart(encode(FetchEntries(7, start + 3, wait_ms=5000)))
    reply = recv(dealer, 1.0)
    assert reply is not None and reply.id == 7 and [e.data for e in reply.entries] == [b"eager"]
    assert recv(dealer, 2.5) is None  # the replaced fetch is never answered
