"""What libzmq itself does with a hostile peer on our tcp links (issue 10): the peer fuzzer
found that a raft process could be aborted by libzmq, `Assertion failed: !_io_error
(src/stream_engine_base.cpp:310)`. libzmq 4.3.5 asserts in out_event when a heartbeat interval
fires on a connection whose input had stopped (its queue full, or its routing id taken over
under ROUTER_HANDOVER) and which the far end then closed (libzmq issues 3937, 4364, 4767).
Any client of the peer port could do it by taking a peer's id while sending and hanging up;
a host impersonating a peer could do it to our peer DEALERs. zraft.transport.sockets now runs
no heartbeat interval on the peer inbox and gives heartbeating DEALERs an unbounded receive
queue; each test here aborted the process before that change."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from tests.component.test_peer_fuzz_support import SocketHost
from tests.component.test_raft_proc_support import free_port, single_node, wait_for
from zraft.transport.sockets import peer_dealer, send_nowait
from zraft.wire.messages import Propose, Proposed

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def take_over_while_sending(ctx: zmq.Context[zmq.Socket[bytes]], address: str, routing_id: bytes,
                            seconds: float, alive) -> int:  # type: ignore[no-untyped-def]
    """A peer streams to `address` under `routing_id` while, again and again, a client takes
    that id over (ROUTER_HANDOVER), keeps sending until the peer takes it back, and hangs
    up. Returns how many takeovers were made (fewer when `alive()` turned false)."""
    stop = threading.Event()

    def stream() -> None:
        sock = peer_dealer(ctx, int(routing_id), address)
        while not stop.is_set():
            if not send_nowait(sock, [b"x" * 100]):
                time.sleep(0.001)
        sock.close(linger=0)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    takeovers = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and alive():
            client = ctx.socket(zmq.DEALER)
            client.setsockopt(zmq.LINGER, 0)
            client.setsockopt(zmq.ROUTING_ID, routing_id)
            client.connect(address)
            until = time.monotonic() + 0.3  # across the peer's reconnection (100 ms)
            while time.monotonic() < until:
                client.send(b"takeover")
                time.sleep(0.001)
            client.close(linger=0)
            takeovers += 1
    finally:
        stop.set()
        thread.join(5)
    return takeovers


def test_taking_a_peers_link_over_while_sending_does_not_abort_the_raft_process(tmp_path, ctx):
    node = single_node(tmp_path)
    node.start()
    try:
        wait_for("the node to lead", lambda: (node.status() or {}).get("role") == "leader", 15)
        assert node.proc is not None
        pid = node.proc.pid
        takeovers = take_over_while_sending(ctx, node.config.me().raft, b"2", 8.0, node.alive)
        time.sleep(1.5)  # past one heartbeat interval
        assert node.alive() and node.proc.pid == pid, f"died after {takeovers} takeovers:\n{node.log_text()[-2000:]}"
        assert isinstance(node.call(Propose(0, b"still serving")), Proposed)
    finally:
        node.kill()


def test_a_peer_inbox_survives_a_full_queue_that_is_hung_up_on(ctx):
    """The inbox's reader falls behind (a busy raft process); a client queues more than
    RCVHWM messages on one connection and hangs up."""
    address = f"tcp://127.0.0.1:{free_port()}"
    host = SocketHost("peer_inbox", address)
    try:
        for _ in range(2):
            stall = threading.Thread(target=host.ask, args=("stall 3",))
            stall.start()
            client = ctx.socket(zmq.DEALER)
            client.setsockopt(zmq.LINGER, 0)
            client.setsockopt(zmq.SNDHWM, 0)
            client.connect(address)
            for _ in range(20_000):
                client.send(b"x")
            time.sleep(1.0)
            client.close(linger=0)
            stall.join(10)
        time.sleep(1.5)
        assert host.proc.poll() is None, f"the inbox's process exited with {host.proc.poll()}"
        assert host.ask("status")["received"] > 0
    finally:
        host.close()


def test_a_peer_dealer_survives_an_impostor_that_floods_it_and_hangs_up(ctx):
    """A host at a peer's address (the peer is down, or the network lies) sends our peer
    DEALER, which is never read, many small messages and closes."""
    address = f"tcp://127.0.0.1:{free_port()}"
    impostor = ctx.socket(zmq.ROUTER)
    impostor.setsockopt(zmq.LINGER, 0)
    impostor.setsockopt(zmq.SNDHWM, 0)
    impostor.bind(address)
    host = SocketHost("peer_dealer", address, "noread")
    try:
        assert impostor.poll(5000)
        identity = impostor.recv_multipart()[0]
        for _ in range(2):
            for _ in range(20_000):
                impostor.send_multipart([identity, b"y"])
            time.sleep(1.0)
            impostor.close(linger=0)
            time.sleep(1.5)  # past one heartbeat interval
            assert host.proc.poll() is None, f"the DEALER's process exited with {host.proc.poll()}"
            impostor = ctx.socket(zmq.ROUTER)  # back, for another round
            impostor.setsockopt(zmq.LINGER, 0)
            impostor.setsockopt(zmq.SNDHWM, 0)
            impostor.bind(address)
            assert impostor.poll(5000)
            identity = impostor.recv_multipart()[0]
        assert host.ask("status")["sent"] > 0
    finally:
        host.close()
        impostor.close(linger=0)
