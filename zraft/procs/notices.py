"""Numbered notices on a PUB socket: the Clone pattern's publishing half, for both shells.

The raft process announces its commit index (CommitNotice) and the store its applied index
(AppliedNotice). A notice is only a hint that wakes a subscriber up: ZeroMQ drops PUB messages
(slow joiners, full queues, restarts), so everything a subscriber needs it fetches by request.
Numbering lets a subscriber see what it missed: `epoch` names one incarnation of the
publisher (its start time in ns), `seq` counts the notices of that incarnation from 1, and
a heartbeat goes out at least every `heartbeat_s`, so silence means a dead or cut-off
publisher, never "nothing happened".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from zraft.procs.shell import Counters
from zraft.transport.sockets import send_nowait
from zraft.wire.codec import encode
from zraft.wire.messages import CommitNotice, WireMessage


class NoticePublisher:
    """Publishes numbered notices; owned by the loop thread."""

    def __init__(self, sock: zmq.Socket[bytes], heartbeat_s: float, stats: Counters) -> None:
        self.sock = sock
        self.heartbeat_s = heartbeat_s
        self.epoch = time.time_ns()
        self.seq = 0
        self.last_sent = float("-inf")
        self._stats = stats

    def due(self, now: float) -> bool:
        """A heartbeat is due: nothing was published for `heartbeat_s`."""
        return now - self.last_sent >= self.heartbeat_s

    def next_heartbeat(self) -> float:
        return self.last_sent + self.heartbeat_s

    def publish(self, build: Callable[[int, int], WireMessage], now: float) -> None:
        """Publish `build(epoch, seq)` with the next seq; a notice the socket cannot take
        now is dropped and counted (it was only a hint)."""
        self.seq += 1
        if not send_nowait(self.sock, encode(build(self.epoch, self.seq))):
            self._stats["notices_dropped"] += 1
        self.last_sent = now


class CommitAnnouncer:
    """The raft process's commit notices: one on every change of (commit, term, leader), and
    a heartbeat every interval.

    One shortcut: when only the commit moved and a parked long-poll fetch has just carried
    the new entries to the store (or holds it for a store lingering on purpose), the notice
    would only wake the subscribers for nothing; it is skipped, and the next heartbeat
    announces the commit anyway."""

    def __init__(self, publisher: NoticePublisher, stats: Counters) -> None:
        self.publisher = publisher
        self._stats = stats
        self._published: tuple[int, int, int] = (-1, -1, -1)

    def announce(self, commit: int, term: int, leader: int, fetch_carried: bool, fetch_held: bool,
                 now: float) -> None:
        key = (commit, term, leader)
        if not self.publisher.due(now):
            if key == self._published:
                return
            if (fetch_carried or fetch_held) and key[1:] == self._published[1:]:
                self._published = key
                self._stats["notices_skipped"] += 1
                return
        self.publisher.publish(lambda epoch, seq: CommitNotice(epoch, seq, commit, term, leader), now)
        self._published = key
