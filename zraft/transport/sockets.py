"""Socket factories, one per role a socket plays, and the two non-blocking I/O helpers.

Ownership: a socket belongs to the thread that made it (ZeroMQ sockets are not thread-safe);
every factory takes the zmq.Context to make it in and returns a ready, configured socket.

Why each option (libzmq doc/zmq_setsockopt.adoc; zguide chapters 2 and 4):
- LINGER=0 everywhere: a closing process never waits for unsent messages.
- Peer DEALERs: IMMEDIATE=1 queues only to completed connections and drops the pipe when a
  connection breaks, so a peer that comes back never receives a stale backlog (Raft
  retransmits what matters); a small SNDHWM bounds memory while a peer is slow.
- Peer inbox ROUTER: ROUTER_HANDOVER=1 lets a restarted peer take over its routing id at once,
  even before the old connection is noticed dead.
- RPC ROUTER: ROUTER_MANDATORY=1 makes a reply to a vanished client an error we count rather
  than a silent drop.
- ZMTP heartbeats on tcp links notice a dead connection that TCP itself would keep for minutes.
- The api process's sockets (api_*) are driven by its asyncio loop (zraft.api.zmq_client) and
  carry up to `api.max_in_flight` requests at once, each with its own deadline; their HWMs
  are API_HWM so that ZeroMQ never drops what admission control has let in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import zmq

PEER_SNDHWM = 1000
"""Messages queued per peer connection before sends report a drop."""
PEER_RCVHWM = 10_000
RPC_HWM = 10_000
PUB_SNDHWM = 10_000
API_HWM = 100_000
"""Ten times the default `api.max_in_flight` (10,000): every admitted request, and a burst
beyond it that admission answers with Busy, fits in the queues, so that a request gets an
answer (or waits in the caller's own outbox) rather than meeting a full ZeroMQ queue."""
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000

Frames = list[bytes]


def _base(sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def _heartbeats(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


def bind(sock: zmq.Socket[bytes], address: str) -> None:
    """Bind `address`, creating the folder of an ipc:// path first. Raises zmq.ZMQError."""
    if address.startswith("ipc://"):
        path = Path(address.removeprefix("ipc://"))
        if path.parent != Path(""):
            os.makedirs(path.parent, exist_ok=True)
    sock.bind(address)


def bound(sock: zmq.Socket[bytes], address: str) -> zmq.Socket[bytes]:
    """Bind `sock` to `address` and return it; on failure close it, so no socket leaks."""
    try:
        bind(sock, address)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


def from_own_address(destination: str, own_address: str) -> str:
    """`destination` with its source pinned to the host of `own_address`, when both are tcp
    and that host is a specific IPv4 address.

    Without this the kernel picks the source address of an outgoing connection, which on
    loopback is 127.0.0.1 whatever address a node listens on; firewall rules written per node
    address (how the chaos suite cuts links) would then match none of the traffic between
    nodes. On a multi-homed host it also keeps node-to-node traffic on the node's own address.
    ZeroMQ's "tcp://SOURCE:0;DEST" form binds the source before connecting."""
    own = re.fullmatch(r"tcp://(\d{1,3}(?:\.\d{1,3}){3}):\d+", own_address)
    if own is None or own.group(1) == "0.0.0.0" or not destination.startswith("tcp://") \
            or ";" in destination:
        return destination
    return f"tcp://{own.group(1)}:0;{destination.removeprefix('tcp://')}"


def peer_inbox(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """ROUTER bound to this node's Raft address; receives [routing id, *message frames]."""
    sock = _base(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.RCVHWM, PEER_RCVHWM)
    _heartbeats(sock)
    return bound(sock, address)


def peer_dealer(ctx: zmq.Context[zmq.Socket[bytes]], my_id: int, address: str) -> zmq.Socket[bytes]:
    """DEALER connected to one peer's inbox; its routing id is our node id in decimal."""
    sock = _base(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.ROUTING_ID, str(my_id).encode())
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    _heartbeats(sock)
    sock.connect(address)
    return sock


def rpc_server(ctx: zmq.Context[zmq.Socket[bytes]], address: str, hwm: int = RPC_HWM) -> zmq.Socket[bytes]:
    """ROUTER serving request/reply RPCs from local processes (DEALER clients)."""
    sock = _base(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return bound(sock, address)


def rpc_dealer(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """DEALER for an RPC client; no envelope delimiter, frames are the message itself."""
    sock = _base(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.SNDHWM, RPC_HWM)
    sock.setsockopt(zmq.RCVHWM, RPC_HWM)
    sock.connect(address)
    return sock


def publisher(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """PUB for notices; drops (never blocks) for a slow subscriber at the HWM."""
    sock = _base(ctx.socket(zmq.PUB))
    sock.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
    return bound(sock, address)


def subscriber(ctx: zmq.Context[zmq.Socket[bytes]], address: str, prefix: bytes = b"",
               hwm: int | None = None) -> zmq.Socket[bytes]:
    """SUB connected to a publisher, subscribed to every message (or those starting `prefix`);
    `hwm` sets RCVHWM (ZeroMQ's default, 1000, otherwise)."""
    sock = _base(ctx.socket(zmq.SUB))
    if hwm is not None:
        sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(address)
    return sock


def api_dealer(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """DEALER of the api process: to its raft and store processes, or to another node's native
    endpoint. Many requests in flight, matched to replies by id; each has a deadline.

    - IMMEDIATE=1: a request is queued only to a completed connection. Otherwise a request made
      while the far process restarts would wait in the pipe and go out on reconnect after its
      caller gave up: a stale Propose would be appended with nobody waiting for its result.
      The caller keeps what cannot be sent and retries it until its deadline instead.
    - SNDHWM/RCVHWM=API_HWM: see API_HWM.
    - RECONNECT_IVL 100 ms, backing off to 1 s: a restarted raft or store process is found
      again about 100 ms after it binds, without spinning while it stays down (requests wait
      in the caller's outbox meanwhile, up to their deadlines).
    - On tcp (a peer's native endpoint), ZMTP heartbeats (HEARTBEAT_IVL, HEARTBEAT_TIMEOUT)
      close a connection to a node that vanished without a FIN, so that IMMEDIATE stops
      queueing to it; ipc links to local processes fail with the process. No HEARTBEAT_TTL:
      the far end is a ROUTER that only answers, and need not drop us when we are slow.
    """
    sock = _base(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, API_HWM)
    sock.setsockopt(zmq.RCVHWM, API_HWM)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    if address.startswith("tcp://"):
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.connect(address)
    return sock


def api_server(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """ROUTER of the api process's native endpoint (forwarded requests from followers and
    native clients); as rpc_server, with ROUTER_MANDATORY=1 so that a reply to a client that
    went away is counted rather than silently dropped, but with API_HWM queues, since it takes
    a whole cluster's forwarded load rather than one local process's requests."""
    return rpc_server(ctx, address, API_HWM)


def api_subscriber(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """SUB of the api process to its raft process's commit notices, every topic. RCVHWM=API_HWM:
    notices are hints (who leads, in which term) and losing some is harmless, but a loop busy
    for a moment should still find the latest ones queued rather than fall back to asking the
    raft process on the next weak read."""
    return subscriber(ctx, address, hwm=API_HWM)


def send_nowait(sock: zmq.Socket[bytes], frames: Frames) -> bool:
    """Send without blocking; False when the message was dropped (HWM reached, no completed
    connection under IMMEDIATE, or an unroutable ROUTER_MANDATORY destination)."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise
    return True


def recv_batch(sock: zmq.Socket[bytes], limit: int) -> list[Frames]:
    """Drain up to `limit` waiting messages without blocking."""
    out: list[Frames] = []
    while len(out) < limit:
        try:
            out.append(sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            break
    return out
