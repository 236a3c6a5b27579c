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
- ZMTP heartbeats on the connecting side of tcp links (peer and api DEALERs) notice a dead
  connection that TCP itself would keep for minutes. Never on a bound socket, and never with a
  bounded receive queue: libzmq 4.3.5 aborts the whole process (`Assertion failed: !_io_error
  (src/stream_engine_base.cpp:310)`, in out_event; libzmq issues 3937, 4364, 4767) when a
  heartbeat interval fires on a connection whose input had stopped (its queue full, or its
  routing id taken over under ROUTER_HANDOVER) and which the far end then closed. So a
  heartbeating DEALER takes RCVHWM=0, and the peer inbox, which any client can reach, runs no
  heartbeat interval: the peer DEALERs' PINGs carry a TTL after which it drops a silent
  connection, and TCP keepalive drops those of clients that send no PINGs.
- The api process's sockets (api_*) are driven by its asyncio loop (zraft.api.zmq_client) and
  carry up to `api.max_in_flight` requests at once, each with its own deadline; their HWMs
  are API_HWM so that ZeroMQ never drops what admission control has let in.
- MAXMSGSIZE on every socket that reads from TCP (peer inbox, native endpoint, peer DEALERs,
  api DEALERs on tcp): libzmq compares each frame's length field with the cap before it
  allocates the frame and drops the connection that exceeds it, so no peer can make a
  process allocate (and stall on) a frame of any size. Each cap is the largest frame a
  correct sender sends on that link, derived from the settings (`*_max_frame_bytes`). What a
  cap does not bound (a message of many frames), and libzmq's rule that a *connecting*
  socket which meets an oversized frame never reconnects (hence `redial`), are in
  transport/DESIGN.md.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import zmq

from zraft.config import ApiSettings, RaftSettings
from zraft.wire.codec import MAX_HEADER_BYTES

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
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTVL_S = 5
KEEPALIVE_CNT = 3
"""TCP keepalive on the peer inbox: a client connection silent for 10 s is probed every 5 s and
dropped after 3 unanswered probes (about 25 s)."""
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000

Frames = list[bytes]

# == frame caps (ZMQ_MAXMSGSIZE) ===============================================================
FRAME_HEADROOM = 1 << 20
"""Added to every cap: envelope fields, JSON escaping, numbers spelled longer than they came
in. Generous on purpose: a cap that cuts a correct frame costs a dropped connection."""


def native_max_frame_bytes(api: ApiSettings) -> int:
    """The largest frame the native endpoint (api_server) takes: one client request.

    A request is one frame: its statements and options are the JSON header, BLOB parameters
    base64 inside it. A native client's request is what an HTTP body of up to
    `api.max_body_bytes` would hold; one that a follower forwards is such a body re-encoded,
    which wraps each statement as [sql, params] (at most `api.max_statements` of them) and never
    inflates BLOBs (hex and integer-list BLOBs shrink to base64). Twice the body limit covers
    both with room to spare. A body whose re-encoding is larger still (numbers written shorter
    than orjson writes them: 1e15 comes out as 1000000000000000.0) must be refused by the api
    before it forwards or proposes it, not cut here."""
    return 2 * api.max_body_bytes + FRAME_HEADROOM


def peer_max_frame_bytes(raft: RaftSettings, api: ApiSettings) -> int:
    """The largest frame the peer inbox takes: the larger of an AppendEntries header and one
    entry's data.

    - The header holds a [term, index, kind] row per entry. The core puts at most
      `raft.max_msg_bytes` of entries in one AppendEntries (each counts at least 24 bytes,
      Entry.size) and coalescing keeps to the same budget, so a header stays under about
      2 x max_msg_bytes even with 19-digit numbers; 4 x leaves room.
    - One entry is always sent, however large: its data is one client command, at most what
      the native endpoint takes (native_max_frame_bytes). A leader must refuse a proposal
      larger than this cap (zraft.procs): followers would otherwise drop its connection at
      every attempt to send that entry, until an election replaces the leader."""
    return max(4 * raft.max_msg_bytes, native_max_frame_bytes(api)) + FRAME_HEADROOM


def peer_max_header_bytes(raft: RaftSettings) -> int:
    """The largest header frame (frame 0 of a Raft message) a correct peer sends: an
    AppendEntries's, under about 2 x max_msg_bytes (see peer_max_frame_bytes). The inbox's cap
    must admit an entry's data, so it admits a header that large too; the receiver checks the
    header against this before decoding it, since a dense JSON header near the cap costs a
    second or more and a gigabyte of objects to parse."""
    return 4 * raft.max_msg_bytes + FRAME_HEADROOM


PEER_MAX_HEADER = peer_max_header_bytes(RaftSettings())
"""`PeerTransport`'s default header check: under the default settings (5 MiB)."""
PEER_MAX_FRAME = peer_max_frame_bytes(RaftSettings(), ApiSettings())
"""`peer_inbox`'s default: the cap under the default settings (34 MiB)."""
NATIVE_MAX_FRAME = native_max_frame_bytes(ApiSettings())
"""`api_server`'s default: the cap under the default settings (33 MiB)."""
API_REPLY_MAX_FRAME = MAX_HEADER_BYTES + FRAME_HEADROOM
"""What an api DEALER on tcp takes from another node's native endpoint (65 MiB): its replies
(ClientResults, StatusReply, Error) are one header frame, which `decode` refuses above
MAX_HEADER_BYTES anyway, and the store keeps results below that (store.max_result_bytes); the
headroom is for the envelope the far api puts around a result."""
PEER_DEALER_MAX_FRAME = 4096
"""What a peer DEALER takes: no message is ever sent to it (Raft messages are one-way; a reply
travels on the replier's own DEALER), so only ZMTP's own commands arrive: the handshake's
READY with the far end's properties and heartbeats, well under 300 bytes (libzmq applies the
cap to them too: 16 bytes breaks the handshake, 64 does not)."""


def _base(sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def _heartbeats(sock: zmq.Socket[bytes]) -> None:
    """ZMTP heartbeats on a connecting socket, with the unbounded receive queue they need (see
    the module doc: a heartbeat interval on a connection whose input stopped aborts libzmq)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.RCVHWM, 0)


def _keepalive(sock: zmq.Socket[bytes]) -> None:
    """Kernel TCP keepalive: notices a dead client connection without a libzmq timer."""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)


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


def peer_inbox(ctx: zmq.Context[zmq.Socket[bytes]], address: str,
               max_frame_bytes: int = PEER_MAX_FRAME) -> zmq.Socket[bytes]:
    """ROUTER bound to this node's Raft address; receives [routing id, *message frames].
    A peer that sends a frame above `max_frame_bytes` is disconnected before the frame is
    read; pass peer_max_frame_bytes(config.raft, config.api). No heartbeat interval of its own
    (any client can reach it: see the module doc), TCP keepalive instead."""
    sock = _base(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.RCVHWM, PEER_RCVHWM)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    _keepalive(sock)
    return bound(sock, address)


def peer_dealer(ctx: zmq.Context[zmq.Socket[bytes]], my_id: int, address: str) -> zmq.Socket[bytes]:
    """DEALER connected to one peer's inbox; its routing id is our node id in decimal. It is
    never read: MAXMSGSIZE=PEER_DEALER_MAX_FRAME, since nothing is ever sent to it (a far end
    that does send a larger frame loses the connection, and libzmq does not redial it: see
    `redial`). Its receive queue is unbounded for the heartbeats' sake (module doc): whatever
    a host impersonating a peer sends it stays there until PeerLinks drains it."""
    sock = _base(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.ROUTING_ID, str(my_id).encode())
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
    sock.setsockopt(zmq.MAXMSGSIZE, PEER_DEALER_MAX_FRAME)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    _heartbeats(sock)
    sock.connect(address)
    return sock


def rpc_server(ctx: zmq.Context[zmq.Socket[bytes]], address: str, hwm: int = RPC_HWM,
               max_frame_bytes: int = -1) -> zmq.Socket[bytes]:
    """ROUTER serving request/reply RPCs from local processes (DEALER clients);
    `max_frame_bytes` sets MAXMSGSIZE (-1, libzmq's default: no cap)."""
    sock = _base(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
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


def api_dealer(ctx: zmq.Context[zmq.Socket[bytes]], address: str,
               max_reply_bytes: int = API_REPLY_MAX_FRAME) -> zmq.Socket[bytes]:
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
      the far end is a ROUTER that only answers, and need not drop us when we are slow. With
      them, RCVHWM=0 (module doc); the replies are bounded by the requests in flight.
    - On tcp, MAXMSGSIZE=`max_reply_bytes` (API_REPLY_MAX_FRAME, see there): a node that
      answers with a larger frame loses the connection instead of making this process
      allocate it. libzmq then does not reconnect by itself: see `redial`. ipc links go to
      this node's own processes, which are trusted not to.
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
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_reply_bytes)
    sock.connect(address)
    return sock


def api_server(ctx: zmq.Context[zmq.Socket[bytes]], address: str,
               max_frame_bytes: int = NATIVE_MAX_FRAME) -> zmq.Socket[bytes]:
    """ROUTER of the api process's native endpoint (forwarded requests from followers and
    native clients); as rpc_server, with ROUTER_MANDATORY=1 so that a reply to a client that
    went away is counted rather than silently dropped, but with API_HWM queues, since it takes
    a whole cluster's forwarded load rather than one local process's requests. It faces TCP:
    MAXMSGSIZE=`max_frame_bytes` (pass native_max_frame_bytes(config.api)) disconnects a client
    that sends a larger frame before the frame is read; the client's other requests on that
    connection are lost with it (they time out), which is why the api refuses a request above
    the cap before it forwards it."""
    return rpc_server(ctx, address, API_HWM, max_frame_bytes)


def api_subscriber(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """SUB of the api process to its raft process's commit notices, every topic. RCVHWM=API_HWM:
    notices are hints (who leads, in which term) and losing some is harmless, but a loop busy
    for a moment should still find the latest ones queued rather than fall back to asking the
    raft process on the next weak read."""
    return subscriber(ctx, address, hwm=API_HWM)


def redial(sock: zmq.Socket[bytes], address: str) -> None:
    """Drop `sock`'s connection to `address`, if any is left, and connect again.

    libzmq reconnects a connecting socket after a network failure, but not after a protocol
    error: a far end that sends a frame above the socket's MAXMSGSIZE ends that connection for
    good (session_base_t::engine_error terminates the session instead of reconnecting; libzmq
    4.3.5, and master alike), and with IMMEDIATE every later send reports a drop. The owner of
    a DEALER that has not been able to send for a while (longer than the heartbeat timeout,
    say) calls this: on a link that is merely down it costs one reconnection attempt; on a
    link that libzmq gave up on, it is the only way back short of a new socket. The far
    ROUTER must take the returning routing id at once: the peer inbox does (ROUTER_HANDOVER),
    and api DEALERs have none (a plain ROUTER may hold a fixed id's old pipe for a while and
    leave the new connection's messages unread)."""
    try:
        sock.disconnect(address)
    except zmq.ZMQError as exc:
        if exc.errno != errno.ENOENT:
            raise
    sock.connect(address)


def send_nowait(sock: zmq.Socket[bytes], frames: Frames) -> bool:
    """Send without blocking; False when the message was dropped (HWM reached, no completed
    connection under IMMEDIATE, or an unroutable ROUTER_MANDATORY destination).

    copy=False: frames of 64 KiB and more (pyzmq's COPY_THRESHOLD) are handed to libzmq
    without a copy (our frames are immutable bytes); smaller ones are copied all the same,
    which is cheaper for them. An image relayed through a raft process: 1 GB cost about a
    third less CPU per hop."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
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
