"""The store's side of the pull: fetching committed entries from the raft process by index.

The store asks for entries from its applied index + 1 (FetchEntries) on a DEALER to the raft
process's RPC socket; commit notices only say when to ask sooner. One fetch is in flight at
a time. Its life:
- **long poll** right after entries arrived: the raft process holds the fetch up to
  FETCH_WAIT_MS and answers the moment the commit moves, which saves a notice -> fetch round
  trip per commit. An empty answer means the wait ran out, and then notices and the periodic
  fetch (every FETCH_POLL_S) take over until entries flow again, so nothing ever spins;
- **linger**: while nobody waits on this store (a follower's store, mostly) the long poll
  also asks the raft process to gather commits for FETCH_LINGER_MS, for bigger batches; a
  request that parks meanwhile replaces the lingering fetch with an eager one (`hurry`);
- **Lazy Pirate** (zguide ch. 4): a fetch unanswered for FETCH_TIMEOUT_S beyond its wait is
  abandoned, the socket is closed (dropping any stale reply) and a new one made;
- **raft behind**: when the raft process's commit is below the applied index (it salvaged a
  damaged log, or lost an unsynced commit) fetching again at once would only spin; a notice
  of a commit above the applied index, or the periodic fetch, resumes.
A fetch carries the store's disk-full reason, so the raft process refuses writes meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from zraft.procs.lag import LagClock
from zraft.procs.shell import Counters
from zraft.raft import Entry
from zraft.transport.sockets import rpc_dealer, send_nowait
from zraft.wire.codec import encode
from zraft.wire.messages import CommitNotice, EntriesReply, Error, FetchEntries, WireMessage

log = logging.getLogger("zraft.store")

FETCH_TIMEOUT_S = 1.0
"""How long a fetch may go unanswered beyond its long-poll wait."""
FETCH_POLL_S = 0.25
"""Fetch at least this often even without a notice: notices are only hints."""
FETCH_WAIT_MS = 500
"""Long poll: the raft process holds a fetch this long for new commits."""
FETCH_LINGER_MS = 10
"""... and, while nobody waits on this store, gathers commits this long."""


class FetchClient:
    """The fetch state machine; owned by the store process's loop thread. It registers its
    socket with the `poller` it is handed, and re-registers the new one after a reset."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], address: str, poller: zmq.Poller,
                 max_bytes: int, stats: Counters) -> None:
        self._dial: Callable[[], zmq.Socket[bytes]] = lambda: rpc_dealer(ctx, address)
        self._poller = poller
        self._max_bytes = max_bytes
        self._stats = stats
        self.lag = LagClock()
        self.sock = rpc_dealer(ctx, address)
        poller.register(self.sock, zmq.POLLIN)
        self._ids = 0
        self._in_flight = 0  # id of the fetch in flight; 0 when none
        self._deadline = 0.0
        self._sent_at = 0.0
        self._long_poll = True
        self._lingering = False
        self._raft_behind = False
        self._notice: tuple[int, int] = (0, 0)  # (epoch, seq) of the last commit notice
        self.durable = 0
        """The store's durable index, carried by every fetch (the raft process compacts below it)."""

    def close(self) -> None:
        self.sock.close(linger=0)

    def on_notice(self, notice: CommitNotice, sub_empty_at: float, applied: int) -> None:
        """A commit notice, read after the SUB queue was last found empty at `sub_empty_at`."""
        self._stats["notices"] += 1
        epoch, seq = self._notice
        if notice.epoch == epoch and notice.seq != seq + 1:
            self._stats["notice_gaps"] += 1
        if epoch and notice.epoch != epoch and self._in_flight:
            self._deadline = 0.0  # the raft process restarted: a fetch it held is lost
        self._notice = (notice.epoch, notice.seq)
        if notice.commit > applied:
            self._raft_behind = False
        self.lag.heard(notice.commit, sub_empty_at, applied)

    def maybe_fetch(self, now: float, applied: int, disk_full: str, linger: bool) -> None:
        """Send a fetch if one is due: none in flight (a timed-out one is abandoned) and
        entries flowing, known to be committed, or not asked for in FETCH_POLL_S."""
        if self._in_flight and now < self._deadline:
            return
        if self._in_flight:
            self._reset()
        behind = self.lag.known_commit > applied and not self._raft_behind
        if self._long_poll or behind or now - self._sent_at >= FETCH_POLL_S:
            self.send(now, applied, disk_full, linger)

    def send(self, now: float, applied: int, disk_full: str, linger: bool) -> None:
        """Fetch from `applied` + 1 now (a long poll right after entries arrived; lingering if
        `linger` allows, i.e. nobody waits on this store)."""
        self._ids += 1
        wait_ms = FETCH_WAIT_MS if self._long_poll else 0
        self._long_poll = False
        self._lingering = bool(wait_ms) and linger
        self._deadline = now + FETCH_TIMEOUT_S + wait_ms / 1000
        self._sent_at = now
        self._stats["fetches"] += 1
        request = FetchEntries(id=self._ids, start=applied + 1, max_bytes=self._max_bytes, wait_ms=wait_ms,
                               linger_ms=FETCH_LINGER_MS if self._lingering else 0, disk_full=disk_full,
                               durable=self.durable)
        self._in_flight = self._ids if send_nowait(self.sock, encode(request)) else 0

    def hurry(self, now: float, applied: int, disk_full: str) -> None:
        """Someone now waits on this store: replace a lingering fetch with an eager long poll
        (the raft process drops the one it held from us)."""
        if self._in_flight and self._lingering:
            self._long_poll = True
            self.send(now, applied, disk_full, linger=False)

    def on_reply(self, msg: WireMessage, applied: int) -> list[Entry] | None:
        """The entries above `applied` that a reply to the fetch in flight brings (possibly
        none), or None for a reply to nothing in flight (a stale one) or a failed fetch."""
        if getattr(msg, "id", None) != self._in_flight or not self._in_flight:
            return None
        self._in_flight = 0
        if isinstance(msg, Error):
            log.warning("fetch failed: %s %s", msg.code, msg.message)
            return None
        if not isinstance(msg, EntriesReply):
            return None
        self.lag.heard(msg.commit, self._sent_at, applied)  # answered after the fetch was sent
        entries = [e for e in msg.entries if e.index > applied]
        self._long_poll = bool(entries)
        self._raft_behind = not entries and msg.commit <= applied
        return entries

    def stalled(self) -> None:
        """The entries could not be applied (a full disk): no long poll until they can."""
        self._long_poll = False

    def wants_more(self, applied: int) -> bool:
        """After applying a reply: whether to fetch again at once."""
        return (self.lag.known_commit > applied and not self._raft_behind) or self._long_poll

    def _reset(self) -> None:
        """Lazy Pirate: drop the socket and whatever stale reply it may still receive."""
        self._stats["fetch_timeouts"] += 1
        self._poller.unregister(self.sock)
        self.sock.close(linger=0)
        self.sock = self._dial()
        self._poller.register(self.sock, zmq.POLLIN)
        self._in_flight = 0
