"""How long the store's applied data has trailed a commit it knew of: `lag_ms`, for rqlite's
freshness_strict.

Each time the store hears the raft process's commit index it also knows a moment at which
that commit was at most the value heard: for a fetch reply, the time the fetch was sent; for
a notice, the last time the SUB queue was found empty before it was read (the notice was sent
after that). So when a commit index above the known one shows up, its new entries were
committed after the latest such moment of the earlier hearings, and that moment is recorded as
their commit time: early, never late, even when the store was stalled and read a backlog of
notices at once. `lag_ms` is the age of the oldest record not yet covered by the applied index:
0 when caught up, and None (unknown) when the store was already behind at the first hearing
after it started, since nothing says how old its data is then.

Local monotonic time only, no leader clocks: rqlite instead compares the leader's append time
of the last applied entry with the local time it was applied, which needs synchronised clocks
and stays small while the state machine is stuck; this measure grows while the store is stuck
or slow, which is what a strict read must refuse. It cannot see commits the local raft process
has not learned of (a follower whose log still trails the leader's): that would need the
leader's commit index, which the raft process does not report.
"""

from __future__ import annotations

import math
from collections import deque

MAX_LAG_MARKS = 4096
"""(commit, since) records kept; beyond, the newest merge (which only overstates the lag)."""


class LagClock:
    """The store's knowledge of the raft commit index, and how long it has been behind it."""

    def __init__(self) -> None:
        self.known_commit = 0
        """The highest commit index of the raft process heard so far."""
        # (commit index, a monotonic time before the entries up to it were committed) for
        # commits above the applied index, oldest first.
        self._marks: deque[tuple[int, float]] = deque()
        # The latest moment at which the raft commit is known to have been at most
        # known_commit; -inf before anything was heard.
        self._bound_at = float("-inf")

    def heard(self, commit: int, at_most_then: float, applied: int) -> None:
        """The raft process's commit was `commit`, and at most that at `at_most_then`.

        Entries above the known commit were not committed at the latest such moment of
        earlier hearings, so they are marked with it: lag_ms then overstates the data's age
        by at most the gap between hearings (notices come on every commit advance and every
        200 ms) and never understates it. Before any hearing that moment is -inf: "behind
        since unknown"."""
        if commit > self.known_commit:
            self.known_commit = commit
            if commit > applied:
                since = self._bound_at
                if len(self._marks) >= MAX_LAG_MARKS:
                    since = self._marks.pop()[1]  # the newest takes the larger index, keeps its time
                self._marks.append((commit, since))
        self._bound_at = max(self._bound_at, at_most_then)

    def applied_to(self, applied: int) -> None:
        """Forget the marks the applied index now covers."""
        while self._marks and self._marks[0][0] <= applied:
            self._marks.popleft()

    def lag_ms(self, now: float) -> int | None:
        """How long, in ms, the applied data has been behind a commit this store knew of;
        0 when caught up, None when it has been behind since before it first heard the raft
        process (so how long is unknown)."""
        if not self._marks:
            return 0
        since = self._marks[0][1]
        if since == float("-inf"):
            return None
        return max(0, math.ceil((now - since) * 1000))
