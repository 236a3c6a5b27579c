"""PeerLinks: the sending half of the Raft peer transport, one DEALER per remote peer.

Raft messages are one-way: a reply is just another message on the replier's own DEALER, and
the receiving half is the node's ROUTER inbox (sockets.peer_inbox). Sends never block and a
dropped message is only counted: Raft retransmits through heartbeats and probes.

Owned by the raft process's loop thread; not thread-safe.

`coalesce` merges what one Ready sends to the same peer back to back: contiguous
AppendEntries become one message, and a run of successful AppendEntries acknowledgements keeps
only the last (acknowledgements are cumulative). Both are what Raft already tolerates from the
network (the earlier reply lost, the later one delivered), and under a pipelined load they cut
the message count, which is what costs CPU here, by an order of magnitude.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import zmq

from zraft.raft.types import NONE, Message, MsgType
from zraft.transport.sockets import (
    HEARTBEAT_TIMEOUT_MS,
    PEER_MAX_FRAME,
    PEER_MAX_HEADER,
    from_own_address,
    peer_dealer,
    peer_inbox,
    recv_batch,
    redial,
    send_nowait,
)
from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import MemberRemoved, SnapshotChunk, SnapshotPull

PeerMessage = Message | SnapshotPull | SnapshotChunk | MemberRemoved
"""What travels on the peer link: Raft messages, the chunks of a snapshot image with the
pulls that ask for them (zraft.procs.snapshots), and a leader's word to a node that it was
removed (zraft.procs.removal)."""
_SIDE = (SnapshotPull, SnapshotChunk, MemberRemoved)


REDIAL_AFTER_S = HEARTBEAT_TIMEOUT_MS / 1000
"""A link that has dropped every send for this long is dialled again (see sockets.redial)."""
MAX_STRAY = 1024
"""Messages read and dropped from one peer DEALER per call of drain_stray."""


class PeerLinks:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], my_id: int, addresses: Mapping[int, str],
                 stats: Counter[str]) -> None:
        """Connect one DEALER to each peer in `addresses` (our own id is skipped), each from
        our own address when `addresses` gives one (see sockets.from_own_address)."""
        self._ctx = ctx
        self._my_id = my_id
        self._stats = stats
        self._socks: dict[int, zmq.Socket[bytes]] = {}
        self._addresses: dict[int, str] = {}
        self._failing_since: dict[int, float] = {}
        own = addresses.get(my_id, "")
        for node, address in addresses.items():
            if node != my_id:
                self._addresses[node] = from_own_address(address, own)
                self._socks[node] = peer_dealer(ctx, my_id, self._addresses[node])

    def send(self, msg: PeerMessage) -> bool:
        """Encode and send `msg` to `msg.to`; False (and counted) if it was dropped. A link
        that has dropped every send for REDIAL_AFTER_S is dialled again: libzmq gives up on a
        connection for good after a protocol error (a frame above the cap from whoever
        answers at that address)."""
        sock = self._socks.get(msg.to)
        if sock is None:
            self._stats["peer_unknown_dest"] += 1
            return False
        if send_nowait(sock, encode(msg)):
            self._stats["peer_sent"] += 1
            self._failing_since.pop(msg.to, None)
            return True
        self._stats["peer_send_dropped"] += 1
        now = time.monotonic()
        since = self._failing_since.setdefault(msg.to, now)
        if now - since >= REDIAL_AFTER_S:
            self._stats["peer_redials"] += 1
            redial(sock, self._addresses[msg.to])
            self._failing_since[msg.to] = now
        return False

    def drain_stray(self) -> None:
        """Read and drop what arrived on the DEALERs: a correct peer never sends anything back
        on them (a reply travels on the replier's own link), but a host answering at a peer's
        address might, and their receive queues are unbounded (sockets.peer_dealer)."""
        for sock in self._socks.values():
            stray = len(recv_batch(sock, MAX_STRAY))
            if stray:
                self._stats["peer_stray"] += stray

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close(linger=0)
        self._socks.clear()


class PeerTransport:
    """This node's half of the Raft peer network: its inbox ROUTER (bound to its own `raft`
    address in `addresses`) and a PeerLinks DEALER to every other peer. Owned by the raft
    process's loop thread."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], my_id: int, addresses: Mapping[int, str],
                 stats: Counter[str], max_frame_bytes: int = PEER_MAX_FRAME,
                 max_header_bytes: int = PEER_MAX_HEADER) -> None:
        """`max_frame_bytes` caps every frame the inbox reads (sockets.peer_max_frame_bytes),
        `max_header_bytes` the header frame a message may have before it is decoded
        (sockets.peer_max_header_bytes)."""
        self.my_id = my_id
        self.inbox = peer_inbox(ctx, addresses[my_id], max_frame_bytes)
        self.links = PeerLinks(ctx, my_id, addresses, stats)
        self._stats = stats
        self._max_header_bytes = max_header_bytes

    def receive(self, limit: int, bad: Callable[[str, str], None]) -> list[PeerMessage]:
        """Up to `limit` valid messages from the inbox (see `receive`)."""
        return receive(self.inbox, self.my_id, limit, bad, self._max_header_bytes)

    def discard(self, limit: int) -> int:
        """Drop up to `limit` waiting messages unread; how many."""
        return len(recv_batch(self.inbox, limit))

    def send(self, messages: tuple[Message, ...] | list[Message], max_bytes: int) -> None:
        """Send what one Ready hands out, coalesced (see `coalesce`)."""
        merged = coalesce(messages, max_bytes) if len(messages) > 1 else messages
        self._stats["peer_coalesced"] += len(messages) - len(merged)
        for msg in merged:
            self.links.send(msg)

    def close(self) -> None:
        self.links.close()
        self.inbox.close(linger=0)


def receive(inbox: zmq.Socket[bytes], my_id: int, limit: int, bad: Callable[[str, str], None],
            max_header_bytes: int = PEER_MAX_HEADER) -> list[PeerMessage]:
    """Up to `limit` Raft messages waiting on the peer inbox (a ROUTER: frame 0 is the
    sender's routing id, its node id in decimal). What does not decode, or is not a Raft
    message for this node from the node whose link it came on, is reported to
    `bad(counter, detail)` and dropped: a message is never trusted to name its own sender."""
    out: list[PeerMessage] = []
    for frames in recv_batch(inbox, limit):
        if len(frames) < 2:
            bad("peer_decode_errors", "peer message without a body")
            continue
        if len(frames[1]) > max_header_bytes:  # parsing a dense header that large takes seconds
            bad("peer_decode_errors", f"a peer message header of {len(frames[1])} bytes")
            continue
        try:
            msg = decode(frames[1:])
        except RemoteProtocolError as exc:
            bad("peer_decode_errors", f"undecodable peer message: {exc}")
            continue
        if not isinstance(msg, (Message, *_SIDE)):
            bad("peer_decode_errors", f"non-raft message {type(msg).__name__} on the peer inbox")
        elif msg.to != my_id or msg.frm in (NONE, my_id) or frames[0] != str(msg.frm).encode():
            bad("peer_misrouted", f"misrouted peer message {msg.frm}->{msg.to} from {frames[0]!r}")
        else:
            out.append(msg)
    return out


def coalesce(messages: Iterable[Message], max_bytes: int) -> list[Message]:
    """Merge back-to-back messages to the same peer where Raft allows it (see module doc).

    Only a message that directly follows, in per-peer order, the one it merges into is
    merged, so the order of everything each peer receives is unchanged. Merged AppendEntries
    stay under about `max_bytes` of entries."""
    out: list[Message] = []
    last: dict[int, int] = {}  # peer -> position in `out` of the latest message to it
    for msg in messages:
        k = last.get(msg.to)
        if k is not None:
            merged = _merge(out[k], msg, max_bytes)
            if merged is not None:
                out[k] = merged
                continue
        last[msg.to] = len(out)
        out.append(msg)
    return out


def _merge(prev: Message, msg: Message, max_bytes: int) -> Message | None:
    if prev.type != msg.type or prev.term != msg.term or prev.frm != msg.frm:
        return None
    if msg.type == MsgType.APP_RESP:
        if prev.reject or msg.reject or msg.index < prev.index:
            return None
        return msg
    if msg.type != MsgType.APP or prev.snapshot is not None or msg.snapshot is not None:
        return None
    prev_last_term = prev.entries[-1].term if prev.entries else prev.log_term
    if msg.index != prev.index + len(prev.entries) or msg.log_term != prev_last_term:
        return None
    if prev.entries and msg.entries and sum(e.size() for e in prev.entries + msg.entries) > max_bytes:
        return None
    return Message(MsgType.APP, to=msg.to, frm=msg.frm, term=msg.term, log_term=prev.log_term,
                   index=prev.index, entries=prev.entries + msg.entries,
                   commit=max(prev.commit, msg.commit))
