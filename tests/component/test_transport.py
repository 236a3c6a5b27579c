"""zraft.transport over real pyzmq on 127.0.0.1: the socket options the raft process relies on,
message coalescing, the RPC client, and bad input on a live raft process's two ROUTERs."""

from __future__ import annotations

import time

import pytest
import zmq

from tests.component.test_raft_proc_support import free_port, single_node, wait_for
from zraft.raft.types import Entry, Message, MsgType
from zraft.transport import RpcClient, RpcTimeout, coalesce, peer_dealer, peer_inbox, recv_batch, send_nowait
from zraft.wire import decode, encode
from zraft.wire.messages import Error, Ok, Propose, Proposed, RaftStatus, StatusRequest


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _recv_all(sock: zmq.Socket[bytes], wait_s: float) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if sock.poll(20):
            out.extend(recv_batch(sock, 1000))
    return out


def _wait_connected_and_drain(dealer: zmq.Socket[bytes], inbox: zmq.Socket[bytes], tag: bytes) -> list[list[bytes]]:
    """Send `tag` probes until one arrives; return everything the inbox received."""
    got: list[list[bytes]] = []

    def probe() -> bool:
        send_nowait(dealer, [tag])
        if inbox.poll(20):
            got.extend(recv_batch(inbox, 1000))
        return any(frames[1] == tag for frames in got)

    wait_for(f"{tag!r} to arrive", probe, timeout=5)
    return got


def test_immediate_dealer_never_replays_a_backlog_to_a_returning_peer(ctx):
    address = f"tcp://127.0.0.1:{free_port()}"
    dealer = peer_dealer(ctx, 7, address)
    # No connection yet: IMMEDIATE means nothing is queued, the send reports a drop at once.
    assert send_nowait(dealer, [b"early"]) is False

    inbox = peer_inbox(ctx, address)
    got = _wait_connected_and_drain(dealer, inbox, b"hello")
    assert all(frames[0] == b"7" for frames in got)  # routing id = sender's node id

    inbox.close(linger=0)  # the peer dies
    wait_for("the dead connection to be noticed", lambda: not send_nowait(dealer, [b"stale"]), timeout=5)
    for _ in range(100):
        send_nowait(dealer, [b"stale"])

    inbox = peer_inbox(ctx, address)  # the peer returns on the same address
    got = _wait_connected_and_drain(dealer, inbox, b"fresh")
    got += _recv_all(inbox, 0.2)
    bodies = {frames[1] for frames in got}
    assert b"stale" not in bodies and b"early" not in bodies, bodies


def test_plain_dealer_does_replay_a_backlog(ctx):
    """Control: without IMMEDIATE a DEALER queues for the dead peer and floods it on return,
    which is the behaviour the peer DEALER's options exist to prevent."""
    address = f"tcp://127.0.0.1:{free_port()}"
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(address)
    for _ in range(10):
        dealer.send_multipart([b"stale"], zmq.NOBLOCK)
    inbox = peer_inbox(ctx, address)
    got = _recv_all(inbox, 0.5)
    assert [frames[-1] for frames in got].count(b"stale") == 10


def _app(index: int, count: int, to: int = 2, commit: int = 0, term: int = 1) -> Message:
    entries = tuple(Entry(term, i, data=b"x") for i in range(index + 1, index + 1 + count))
    return Message(MsgType.APP, to=to, frm=1, term=term, index=index, log_term=term, entries=entries, commit=commit)


def test_coalesce_merges_contiguous_appends_per_peer():
    msgs = [_app(0, 1, to=2), _app(0, 1, to=3), _app(1, 2, to=2, commit=1), _app(1, 1, to=3, commit=1)]
    out = coalesce(msgs, 1 << 20)
    assert len(out) == 2
    to2 = next(m for m in out if m.to == 2)
    assert (to2.index, [e.index for e in to2.entries], to2.commit) == (0, [1, 2, 3], 1)
    to3 = next(m for m in out if m.to == 3)
    assert [e.index for e in to3.entries] == [1, 2]


def test_coalesce_keeps_per_peer_order_and_rejects():
    heartbeat = Message(MsgType.HEARTBEAT, to=2, frm=1, term=1)
    msgs = [_app(0, 1), heartbeat, _app(1, 1)]
    assert coalesce(msgs, 1 << 20) == msgs  # an APP never jumps over the heartbeat
    assert coalesce([_app(0, 1), _app(5, 1)], 1 << 20) == [_app(0, 1), _app(5, 1)]  # not contiguous
    assert len(coalesce([_app(0, 1), _app(1, 1)], 10)) == 2  # size cap

    ack = lambda i, reject=False: Message(MsgType.APP_RESP, to=1, frm=2, term=1, index=i, reject=reject)  # noqa: E731
    assert coalesce([ack(3), ack(5), ack(7)], 1 << 20) == [ack(7)]
    assert coalesce([ack(3), ack(4, True), ack(7)], 1 << 20) == [ack(3), ack(4, True), ack(7)]
    assert coalesce([ack(7), ack(3)], 1 << 20) == [ack(7), ack(3)]


def test_rpc_client_times_out_resets_and_ignores_stale_replies(ctx, tmp_path):
    address = f"ipc://{tmp_path}/rpc.sock"
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(address)
    client = RpcClient(address, context=ctx)
    try:
        with pytest.raises(RpcTimeout):
            client.call(StatusRequest(0), 0.2)
        first = server.recv_multipart()  # the abandoned request
        server.send_multipart([first[0], *encode(Ok(decode(first[1:]).id, "stale"))])  # type: ignore[union-attr]

        request_id = client.send(StatusRequest(0))
        frames = server.recv_multipart()
        request = decode(frames[1:])
        assert request.id == request_id  # type: ignore[union-attr]
        server.send_multipart([frames[0], *encode(Ok(request_id + 1, "wrong id"))])
        server.send_multipart([frames[0], *encode(Ok(request_id, "right"))])
        reply = client.recv(2)
        assert reply is not None
        # The stale answer went to the closed socket; only this socket's replies arrive.
        assert isinstance(reply, Ok) and reply.result == "wrong id"
        assert client.recv(2) == Ok(request_id, "right")
    finally:
        client.close()


def test_raft_process_drops_and_counts_malformed_frames(ctx, tmp_path):
    node = single_node(tmp_path)
    node.start()
    try:
        wait_for("the single node to lead", lambda: (node.status() or {}).get("role") == "leader")
        rpc = ctx.socket(zmq.DEALER)
        rpc.setsockopt(zmq.LINGER, 0)
        rpc.connect(node.config.raft_rpc)
        raft_msg = encode(Message(MsgType.HEARTBEAT, to=1, frm=2, term=99))
        bad_rpc = [[b"not json"], [b'{"v":1,"k":"propose"}'], [b'{"v":99,"k":"status","id":1}'],
                   [b'{"v":1,"k":"nope","id":1}'], [b'{"v":1,"k":"fetch","id":"x","start":1}'],
                   [b'[1,2]'], raft_msg, [b'{"v":1,"k":"propose","id":1,"data":5}'], encode(Ok(5, None))]
        for frames in bad_rpc:
            rpc.send_multipart(frames)

        peer = ctx.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.setsockopt(zmq.ROUTING_ID, b"2")
        peer.connect(node.config.me().raft)
        misrouted = encode(Message(MsgType.HEARTBEAT, to=5, frm=2, term=99))
        spoofed = encode(Message(MsgType.HEARTBEAT, to=1, frm=3, term=99))
        bad_peer = [[b"\xff\x00"], [b'{"v":1,"k":"raft"}'], encode(StatusRequest(1)), misrouted, spoofed,
                    [b'{"v":1,"k":"raft","t":77,"to":1,"frm":2,"term":1,"lt":0,"i":0,"c":0,"r":false,'
                     b'"rh":0,"x":0,"e":[]}']]
        for frames in bad_peer:
            peer.send_multipart(frames)

        def counted() -> dict[str, int] | None:
            stats = (node.status() or {}).get("stats", {})
            rpc_bad = stats.get("rpc_decode_errors", 0) + stats.get("rpc_bad_requests", 0)
            peer_bad = stats.get("peer_decode_errors", 0) + stats.get("peer_misrouted", 0)
            return stats if rpc_bad == len(bad_rpc) and peer_bad == len(bad_peer) else None

        stats = wait_for("the bad frames to be counted", counted, timeout=5)
        assert stats["peer_misrouted"] == 2
        # A decodable request of the wrong kind gets a bad_request answer; the rest are dropped.
        assert rpc.poll(2000)
        assert decode(rpc.recv_multipart()) == Error(5, "bad_request", "not a raft request")
        assert not rpc.poll(200)
        # Still serving, still leader in the same term (the term-99 heartbeats were dropped).
        status = node.status()
        assert status is not None and status["role"] == "leader" and status["term"] == 1
        assert isinstance(node.call(Propose(0, b"still alive")), Proposed)
        assert node.alive()
        assert isinstance(node.call(StatusRequest(0)), RaftStatus)
    finally:
        node.kill()


def test_peer_links_dial_from_the_nodes_own_address(ctx):
    """Firewall rules between node addresses only cut node traffic if each node sends from
    its own address; on loopback the kernel would otherwise pick 127.0.0.1."""
    from collections import Counter

    from zraft.transport import PeerLinks

    port = free_port()
    inbox = peer_inbox(ctx, f"tcp://127.0.0.3:{port}")
    links = PeerLinks(ctx, 1, {1: f"tcp://127.0.0.2:{free_port()}", 2: f"tcp://127.0.0.3:{port}"}, Counter())
    try:
        msg = Message(MsgType.HEARTBEAT, to=2, frm=1, term=1)
        wait_for("the link to connect", lambda: links.send(msg), timeout=5)
        assert inbox.poll(5000)
        frames = inbox.recv_multipart(copy=False)
        assert frames[0].bytes == b"1"
        assert frames[0].get("Peer-Address") == "127.0.0.2"
    finally:
        links.close()
        inbox.close(linger=0)
