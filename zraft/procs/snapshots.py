"""The raft process's side of snapshots: compacting the log, and moving database images
between nodes (zraft/procs/DESIGN.md, "Snapshots and compaction").

- `Compactor` drops log entries the database no longer needs: up to
  min(the store's durable index, what the core has handed out) - trailing_logs, once the log
  holds `snapshot_threshold` entries beyond that margin, or every `snapshot_interval_ms`; and
  once the log's entries hold `snapshot_threshold_bytes`, with a margin of at most half that
  many bytes (the core keeps its entries in memory: this bounds the raft process's memory).
- `ImageTransfer` carries images over the peer link. As the *sender* it relays a follower's
  SnapshotPull to its own store (ExportRead) and the answer back (SnapshotChunk). As the
  *receiver* it holds a SNAP message from the leader, which the core must not see before the
  store has the data, pulls the image chunk by chunk, hands each chunk to its store
  (ImageWrite) as it arrives, and releases the SNAP once the store has installed an image at
  or past it. Several pulls are in flight at once (at most `raft.max_inflight_bytes` of
  bytes the store has not taken): one pull at a time spent most of a transfer waiting on the
  four process hops of each round trip (a 1 GB image: 7.8 s in 1 MiB round trips).

Both are owned by the raft process's loop thread; neither calls back into the process: the
core, the log store and the peer links are handed in.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from zraft.config import RaftSettings
from zraft.logstore import LogStore
from zraft.procs.shell import Counters
from zraft.raft import Message, RaftCore, SnapshotMeta
from zraft.transport.sockets import recv_batch, rpc_dealer, send_nowait
from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import (
    Error,
    ExportChunk,
    ExportRead,
    ImageWrite,
    ImageWritten,
    SnapshotChunk,
    SnapshotPull,
    WireMessage,
)

log = logging.getLogger("zraft.raft_proc")

PULL_TIMEOUT_S = 5.0
"""A pull unanswered this long is sent again (from the same offset)."""
STORE_TIMEOUT_S = 300.0
"""A chunk the store has not acknowledged this long ends the transfer (installing a large
image takes a while; a store that died restarts and the next SNAP starts over)."""
MAX_RELAYED = 16
"""Pulls from followers waiting on this node's store at once; more are dropped (they retry)."""
RELAY_TIMEOUT_S = 10.0
MAX_REPLIES = 64
BYTES_CHECK_S = 0.25
"""How often the compactor adds up the bytes of the log's entries."""


class Compactor:
    """When and how far to compact; see the module docstring."""

    def __init__(self, settings: RaftSettings, stats: Counters) -> None:
        self._threshold = settings.snapshot_threshold
        self._threshold_bytes = settings.snapshot_threshold_bytes
        self._trailing = settings.trailing_logs
        self._interval_s = settings.snapshot_interval_ms / 1000
        self._stats = stats
        self._last_at = 0.0
        self._bytes_checked_at = 0.0
        self.durable = 0
        """The store's durable index, from its latest fetch."""

    def point(self, core: RaftCore, trailing: int | None = None) -> int:
        """The highest index that may be dropped now (at or below the current start: none)."""
        keep = self._trailing if trailing is None else trailing
        return min(self.durable, core.log.applied) - keep

    def maybe_compact(self, core: RaftCore, store: LogStore, now: float) -> SnapshotMeta | None:
        """Compact if due; the new snapshot point, or None. Raises OSError from the log store."""
        start = core.log.snapshot.index
        point = self.point(core)
        if point > start and (point - start >= self._threshold or now - self._last_at >= self._interval_s):
            return self.compact(core, store, point, now)
        if min(self.durable, core.log.applied) <= start or now - self._bytes_checked_at < BYTES_CHECK_S:
            return None
        self._bytes_checked_at = now  # the sum below walks every entry in memory: not on every tick
        point = self._point_by_bytes(core)
        return self.compact(core, store, point, now) if point > start else None

    def _point_by_bytes(self, core: RaftCore) -> int:
        """Once the log's entries hold `snapshot_threshold_bytes`, the highest index that may
        go with a margin of at most half that many bytes (and at most trailing_logs entries);
        else the current start."""
        log_ = core.log
        entries = log_.entries
        start = log_.snapshot.index
        if sum(len(e.data) for e in entries) < self._threshold_bytes:
            return start
        point = min(self.durable, log_.applied)
        kept = 0
        budget = self._threshold_bytes // 2
        while point > start and point - start <= len(entries) and kept < self._trailing:
            size = len(entries[point - start - 1].data)
            if size > budget:
                break
            budget -= size
            point -= 1
            kept += 1
        return point

    def compact(self, core: RaftCore, store: LogStore, point: int, now: float) -> SnapshotMeta | None:
        """Drop entries up to `point` from the log store (durably, first) and the core."""
        self._last_at = now
        if point <= core.log.snapshot.index:
            return None
        started = time.perf_counter()
        meta = core.compact(point)
        store.compact(point, meta)
        self._stats["compactions"] += 1
        took_us = int((time.perf_counter() - started) * 1e6)  # the raft loop's share of a snapshot's stall
        self._stats["compact_max_us"] = max(self._stats["compact_max_us"], took_us)
        log.info("log compacted up to index %d (term %d); it starts at %d now", meta.index, meta.term,
                 meta.index + 1)
        return meta


@dataclass(slots=True)
class _Pull:
    """The receiver's one transfer: from `leader`, of an image that must reach `index`.

    Bytes move through three offsets: `requested` (pulls sent up to here), `forwarded` (chunks
    handed to the store, in order, up to here) and `acked` (what the store says it holds).
    Pulls are sent while `requested - acked` stays within the window, so at most a window of
    image bytes is on its way or queued at the store at once."""

    leader: int
    session: int
    index: int
    size: int = 0
    """The image's size, once a chunk has told it (0: only the first pull is sent)."""
    requested: int = 0
    forwarded: int = 0
    acked: int = 0
    first_id: int = 0
    """Pulls with a lower id were sent before the window last restarted: their chunks are used
    if they are the next bytes, and otherwise dropped without restarting it again."""
    stride: int = 0
    """Bytes asked for per pull: the configured chunk, or less if the sender serves less."""
    writes: deque[tuple[int, int]] = field(default_factory=deque)
    """ImageWrites the store has not answered: (request id, the offset the chunk ends at)."""
    progress_at: float = 0.0


class ImageTransfer:
    """Both ends of image transfers over the peer link; see the module docstring."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], my_id: int, store_rpc: str, chunk_bytes: int,
                 send_peer: Callable[[SnapshotPull | SnapshotChunk], bool], stats: Counters,
                 rng: random.Random | None = None, window_bytes: int = 0) -> None:
        self.sock = rpc_dealer(ctx, store_rpc)
        self._my_id = my_id
        self._chunk = chunk_bytes
        self._window = max(window_bytes, chunk_bytes)
        self._send_peer = send_peer
        self._stats = stats
        self._rng = rng or random.Random()
        self._ids = 0
        self._relayed: dict[int, tuple[int, int, int, float]] = {}  # id -> (follower, session, pull id, sent at)
        self._pull: _Pull | None = None
        self._pending: Message | None = None
        self.store_applied = 0
        """The store's applied index, from its latest fetch (start - 1)."""

    def close(self) -> None:
        self.sock.close(linger=0)

    @property
    def active(self) -> bool:
        return self._pull is not None

    # == receiver ==============================================================================
    def hold(self, msg: Message, now: float) -> bool:
        """Whether the core must not see this SNAP yet: the store lacks the data. Holding it
        starts a pull from its sender (or keeps the one running)."""
        assert msg.snapshot is not None
        if self.store_applied >= msg.snapshot.index:
            return False
        self._pending = msg
        pull = self._pull
        if pull is not None and pull.leader == msg.frm:
            pull.index = max(pull.index, msg.snapshot.index)
            return True
        self._start(msg.frm, msg.snapshot.index, now)
        return True

    def store_behind_log(self, leader: int, log_start: int, now: float) -> None:
        """The store asks for entries the log has dropped (its database was lost or replaced
        by an older one while the log was kept): pull an image from the leader, as for a SNAP,
        but with no SNAP to release afterwards."""
        if self._pull is None and leader not in (0, self._my_id):
            self._stats["snapshot_store_behind"] += 1
            self._start(leader, log_start, now)

    def on_chunk(self, chunk: SnapshotChunk, now: float) -> None:
        """Hand the next bytes to the store as soon as they arrive; a chunk past them means one
        was lost on the way: ask again from the first missing byte."""
        pull = self._pull
        if pull is None or chunk.frm != pull.leader or chunk.session != pull.session:
            self._stats["snapshot_stray_chunks"] += 1
            return
        current = chunk.id >= pull.first_id
        if chunk.size == 0:  # the sender cannot serve this session: start again
            if current:
                self._start(pull.leader, pull.index, now)
            return
        if chunk.offset + len(chunk.data) > chunk.size or (pull.size and chunk.size != pull.size):
            self._stats["snapshot_stray_chunks"] += 1
            return
        if chunk.offset != pull.forwarded or (not chunk.data and chunk.offset < chunk.size):
            if chunk.offset > pull.forwarded and current:
                self._stats["snapshot_chunk_gaps"] += 1
                self._restart_window(pull, pull.forwarded, now)
            return
        pull.size = chunk.size
        self._ids += 1
        if not send_nowait(self.sock, encode(ImageWrite(self._ids, pull.session, chunk.offset, chunk.size,
                                                        chunk.data))):
            self._restart_window(pull, pull.forwarded, now)
            return
        pull.forwarded += len(chunk.data)
        pull.writes.append((self._ids, pull.forwarded))
        pull.progress_at = now
        self._stats["snapshot_bytes_received"] += len(chunk.data)
        if len(chunk.data) < pull.stride and pull.forwarded < pull.size:  # the sender serves smaller chunks
            pull.stride = len(chunk.data)
            self._restart_window(pull, pull.forwarded, now, keep_writes=True)
        else:
            self._fill(pull, now)

    def _on_written(self, reply: ImageWritten, now: float) -> Message | None:
        pull = self._pull
        if pull is None or reply.session != pull.session:
            return None
        while pull.writes and pull.writes[0][0] < reply.id:
            pull.writes.popleft()  # their replies were lost: this later one says where the store is
        if not pull.writes or pull.writes[0][0] != reply.id:
            return None  # a write from before the window restarted
        _, end = pull.writes.popleft()
        pull.progress_at = now
        if reply.installed:
            self.store_applied = max(self.store_applied, reply.installed)
            self._pull = None
            log.info("snapshot image installed: the store holds index %d", reply.installed)
            pending, self._pending = self._pending, None
            if pending is not None and pending.snapshot is not None and pending.snapshot.index <= reply.installed:
                return pending
            return None
        if (reply.received == 0 and end > 0) or reply.received >= pull.size > 0:
            self._start(pull.leader, pull.index, now)  # the store dropped it, or refused the image
            return None
        pull.acked = reply.received
        if reply.received != end:  # the store kept less than it was sent: go on from what it has
            self._restart_window(pull, reply.received, now)
        else:
            self._fill(pull, now)
        return None

    def _start(self, leader: int, index: int, now: float) -> None:
        self._pull = _Pull(leader, self._rng.getrandbits(62) | 1, index, stride=self._chunk, progress_at=now)
        self._stats["snapshot_pulls_started"] += 1
        log.info("pulling a snapshot image from node %d (its log starts after %d)", leader, index)
        self._restart_window(self._pull, 0, now)

    def _restart_window(self, pull: _Pull, offset: int, now: float, keep_writes: bool = False) -> None:
        """Forget the pulls in flight and pull again from `offset` (chunks of earlier pulls that
        still arrive in order are used). Writes the store has not answered are forgotten too,
        unless `keep_writes`: then their replies still count."""
        pull.requested = pull.forwarded = offset
        if not keep_writes:
            pull.acked = offset
            pull.writes.clear()
        pull.first_id = self._ids + 1
        pull.progress_at = now
        self._fill(pull, now)

    def _fill(self, pull: _Pull, now: float) -> None:
        """Send pulls while the window has room; only one until the image's size is known."""
        pull.requested = max(pull.requested, pull.forwarded)
        while pull.requested - pull.acked < self._window:
            if pull.size == 0 and pull.requested > pull.forwarded:
                return
            if 0 < pull.size <= pull.requested:
                return
            self._ids += 1
            self._send_peer(SnapshotPull(self._ids, self._my_id, pull.leader, pull.session, pull.index,
                                         pull.requested, pull.stride))
            pull.requested += pull.stride

    # == sender ================================================================================
    def serve(self, pull: SnapshotPull, now: float) -> None:
        """Relay a follower's pull to this node's store."""
        if len(self._relayed) >= MAX_RELAYED:
            self._stats["snapshot_pulls_dropped"] += 1
            return
        self._ids += 1
        request = ExportRead(self._ids, pull.session, pull.offset, min(pull.max_bytes, self._chunk))
        if send_nowait(self.sock, encode(request)):
            self._relayed[self._ids] = (pull.frm, pull.session, pull.id, now)

    def _on_export(self, reply: ExportChunk) -> None:
        relayed = self._relayed.pop(reply.id, None)
        if relayed is None:
            return
        follower, session, pull_id, _ = relayed
        self._stats["snapshot_bytes_sent"] += len(reply.data)
        self._send_peer(SnapshotChunk(pull_id, self._my_id, follower, session, reply.offset, reply.size,
                                      reply.applied, reply.data))

    # == both ==================================================================================
    def on_store_replies(self, now: float) -> Message | None:
        """Read what the store answered; a SNAP the core may now see, if one was released."""
        released = None
        for frames in recv_batch(self.sock, MAX_REPLIES):
            try:
                reply: WireMessage | Message = decode(frames)
            except RemoteProtocolError as exc:
                self._stats.bad("snapshot_bad_replies", f"a store reply that does not decode: {exc}")
                continue
            if isinstance(reply, ExportChunk):
                self._on_export(reply)
            elif isinstance(reply, ImageWritten):
                released = self._on_written(reply, now) or released
            elif isinstance(reply, Error):
                self._relayed.pop(reply.id, None)
                self._stats.bad("snapshot_store_errors", f"store: {reply.message}")
        return released

    def tick(self, now: float) -> None:
        """Resend a pull that went unanswered; drop relays and transfers that stalled."""
        for request, (_, _, _, sent_at) in list(self._relayed.items()):
            if now - sent_at > RELAY_TIMEOUT_S:
                del self._relayed[request]
        pull = self._pull
        if pull is None or now - pull.progress_at <= PULL_TIMEOUT_S:
            return
        if pull.writes and now - pull.progress_at > STORE_TIMEOUT_S:
            log.warning("the store did not take a snapshot chunk in %.0f s; the transfer ends", STORE_TIMEOUT_S)
            self._pull = None
        elif not pull.writes:
            self._stats["snapshot_pull_retries"] += 1
            self._restart_window(pull, pull.forwarded, now)


@dataclass(slots=True)
class Snapshots:
    """The raft shell's two snapshot parts, side by side."""

    compactor: Compactor
    transfer: ImageTransfer
