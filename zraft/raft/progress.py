"""What a leader knows of each follower's log, and how hard it may push entries to it.

A follower is in one of three states (Raft dissertation §3.5 plus etcd's flow control):
- PROBE: the leader does not know where the logs match; one AppendEntries at a time, backing
  off on each rejection;
- REPLICATE: logs match up to `match`; entries stream in pipelined AppendEntries, at most
  `max_inflight` unacknowledged at once, and at most `max_inflight_bytes` of entry data (one
  message always goes, however large). The byte bound is what keeps a heartbeat from queueing
  behind megabytes of entries at a follower that has to persist them first: with large entries
  (a bulk load's 1 MiB chunks) 64 messages in flight were 90 MB, and heartbeats arrived late
  enough to start elections;
- SNAPSHOT: the follower needs entries the leader has compacted; a snapshot is on its way.
"""

from __future__ import annotations

from collections import deque

from zraft.raft.types import ProgressState


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflight", "max_inflight", "inflight_bytes",
                 "max_inflight_bytes", "pending_snapshot", "recent_active", "snapshot_wait", "is_learner")

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool, max_inflight_bytes: int = 0) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[tuple[int, int]] = deque()
        """(last index, bytes of entry data) of each unacknowledged AppendEntries, oldest first."""
        self.max_inflight = max_inflight
        self.inflight_bytes = 0
        self.max_inflight_bytes = max_inflight_bytes
        """0: no bound in bytes."""
        self.pending_snapshot = 0
        self.recent_active = False
        self.snapshot_wait = 0
        self.is_learner = is_learner

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self._clear_inflight()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self._clear_inflight()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_wait = 0
        self._clear_inflight()

    def forget_match(self, next_index: int) -> None:
        """The follower no longer holds what it acknowledged: know nothing, probe from
        `next_index` (its last index + 1)."""
        self.match = 0
        self.next = max(next_index, 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self._clear_inflight()
        self.pending_snapshot = 0

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight or (
                0 < self.max_inflight_bytes <= self.inflight_bytes)
        return True

    def sent(self, last_index: int, had_entries: bool, size: int = 0) -> None:
        """Record an AppendEntries whose last entry is `last_index`, carrying `size` bytes."""
        if self.state == ProgressState.REPLICATE:
            if had_entries:
                self.next = last_index + 1
                self.inflight.append((last_index, size))
                self.inflight_bytes += size
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """A follower acknowledged entries up to `index`; False if the ack is stale."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0][0] <= index:
            self.inflight_bytes -= self.inflight.popleft()[1]
        return updated

    def maybe_decrease_to(self, rejected: int, probe_from: int) -> bool:
        """A follower rejected the AppendEntries after `rejected`; move `next` back.
        Returns False for a stale rejection that says nothing new."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, probe_from + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def free_one_slot(self) -> None:
        if self.inflight:
            self.inflight_bytes -= self.inflight.popleft()[1]

    def _clear_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0
