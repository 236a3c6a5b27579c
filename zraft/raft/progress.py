"""What a leader knows of each follower's log, and how hard it may push entries to it.

A follower is in one of three states (Raft dissertation §3.5 plus etcd's flow control):
- PROBE: the leader does not know where the logs match; one AppendEntries at a time, backing
  off on each rejection;
- REPLICATE: logs match up to `match`; entries stream in pipelined AppendEntries, at most
  `max_inflight` unacknowledged at once;
- SNAPSHOT: the follower needs entries the leader has compacted; a snapshot is on its way.
"""

from __future__ import annotations

from collections import deque

from zraft.raft.types import ProgressState


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflight", "max_inflight",
                 "pending_snapshot", "recent_active", "snapshot_wait", "is_learner")

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
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
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_wait = 0
        self.inflight.clear()

    def forget_match(self, next_index: int) -> None:
        """The follower no longer holds what it acknowledged: know nothing, probe from
        `next_index` (its last index + 1)."""
        self.match = 0
        self.next = max(next_index, 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent(self, last_index: int, had_entries: bool) -> None:
        """Record an AppendEntries whose last entry is `last_index`."""
        if self.state == ProgressState.REPLICATE:
            if had_entries:
                self.next = last_index + 1
                self.inflight.append(last_index)
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
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
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
            self.inflight.popleft()
