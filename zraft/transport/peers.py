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

from collections import Counter
from collections.abc import Iterable, Mapping

import zmq

from zraft.raft.types import Message, MsgType
from zraft.transport.sockets import from_own_address, peer_dealer, send_nowait
from zraft.wire.codec import encode


class PeerLinks:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], my_id: int, addresses: Mapping[int, str],
                 stats: Counter[str]) -> None:
        """Connect one DEALER to each peer in `addresses` (our own id is skipped), each from
        our own address when `addresses` gives one (see sockets.from_own_address)."""
        self._ctx = ctx
        self._my_id = my_id
        self._stats = stats
        self._socks: dict[int, zmq.Socket[bytes]] = {}
        own = addresses.get(my_id, "")
        for node, address in addresses.items():
            if node != my_id:
                self._socks[node] = peer_dealer(ctx, my_id, from_own_address(address, own))

    def send(self, msg: Message) -> bool:
        """Encode and send `msg` to `msg.to`; False (and counted) if it was dropped."""
        sock = self._socks.get(msg.to)
        if sock is None:
            self._stats["peer_unknown_dest"] += 1
            return False
        if send_nowait(sock, encode(msg)):
            self._stats["peer_sent"] += 1
            return True
        self._stats["peer_send_dropped"] += 1
        return False

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close(linger=0)
        self._socks.clear()


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
