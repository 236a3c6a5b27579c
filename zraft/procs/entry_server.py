"""The raft process's side of the store's pull: committed entries served by index.

The raft process never pushes entries. The store asks (FetchEntries from its applied index
+ 1) and this part answers from the durable log, up to `commit`: the last entry the core has
handed out as committed in a Ready, which is committed and durable on this node (the core
guarantees both; raft/DESIGN.md). That is the node's apply path, the same one the simulator
drives.

Long poll: a fetch with `wait_ms` that finds nothing new is parked (ParkingLot) and answered
as soon as the commit reaches its start, which saves the store a notice -> fetch round trip
per commit. A fetch with `linger_ms` is held a few ms more after that, so a store nobody is
waiting on takes bigger batches. Bounds: MAX_PARKED_FETCHES held at once (beyond, a fetch is
answered at once), each at most MAX_FETCH_WAIT_S; a newer fetch from the same requester
replaces its held one, which is then never answered (the requester stopped waiting for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from zraft.logstore import LogCompactedError, LogStore
from zraft.procs.parking import ParkingLot, Ticket
from zraft.procs.shell import Counters
from zraft.raft import Entry
from zraft.wire.messages import EntriesReply, Error, ErrorCode, FetchEntries, WireMessage

FETCH_CHUNK = 256
"""Entries read from the log store at a time while filling a reply."""
MAX_FETCH_WAIT_S = 1.0
"""Longest a long-poll fetch is held before an empty reply."""
MAX_PARKED_FETCHES = 16
"""Long-poll fetches held at once; beyond this a fetch is answered at once, as without wait."""

Reply = Callable[[bytes, WireMessage], bool]
Parked = tuple[bytes, FetchEntries]


class EntryServer:
    """Answers FetchEntries; owned by the raft process's loop thread."""

    def __init__(self, log: LogStore, reply: Reply, max_bytes: int, commit: int, stats: Counters) -> None:
        self._log = log
        self._reply = reply
        self._max_bytes = max_bytes
        self.commit = commit
        """The last entry the core handed out as committed (committed and durable here)."""
        self._stats = stats
        self._parked: ParkingLot[Parked] = ParkingLot(MAX_PARKED_FETCHES)
        self._tickets: dict[bytes, Ticket[Parked]] = {}
        self._carried = False

    def reset(self, log: LogStore, commit: int) -> None:
        """The log was reopened and the core rebuilt from it: serve up to its `commit`."""
        self._log = log
        self.commit = commit

    def commit_to(self, index: int, now: float) -> None:
        """The core handed out entries up to `index` as committed: serve them."""
        self.commit = index
        self.serve_parked(now)

    def fetch(self, identity: bytes, req: FetchEntries, now: float) -> WireMessage | None:
        """The reply to `req` now, or None when it is parked for a later answer."""
        if req.start < 1:
            return Error(req.id, ErrorCode.BAD_REQUEST, "start must be at least 1")
        first = self._log.first_index()
        if req.start < first:
            return Error(req.id, ErrorCode.COMPACTED, f"entries before {first} are compacted")
        held = self._tickets.pop(identity, None)
        if held is not None:
            self._parked.cancel(held)
        if req.wait_ms > 0 and (req.start > self.commit or req.linger_ms > 0) and self._park(identity, req, now):
            return None
        return self._answer(req)

    def _park(self, identity: bytes, req: FetchEntries, now: float) -> bool:
        wait_s = min(req.wait_ms / 1000.0, MAX_FETCH_WAIT_S)
        linger_s = min(req.linger_ms / 1000.0, wait_s)
        ticket = self._parked.park((identity, req), req.start, now + wait_s, not_before=now + linger_s)
        if ticket is None:
            return False
        self._tickets[identity] = ticket
        self._stats["fetches_parked"] += 1
        return True

    def _answer(self, req: FetchEntries) -> WireMessage:
        hi = self.commit
        if req.start > hi:
            return EntriesReply(req.id, hi, [])
        try:
            entries = self._read(req.start, hi, min(max(req.max_bytes, 1), self._max_bytes))
        except LogCompactedError as exc:
            return Error(req.id, ErrorCode.COMPACTED, str(exc))
        self._stats["fetches"] += 1
        return EntriesReply(req.id, hi, entries)

    def _read(self, lo: int, hi: int, budget: int) -> list[Entry]:
        """Entries lo..hi (inclusive) up to about `budget` bytes; at least one. Read in groups
        sized from the entries seen so far (one at first), so that large entries are not read
        from disk only to be left out: reading FETCH_CHUNK bulk-load chunks to send three of
        them held the raft loop for 0.3 s a turn."""
        out: list[Entry] = []
        size = 0
        group = 1
        while lo <= hi:
            for entry in self._log.entries(lo, min(hi + 1, lo + group)):
                size += entry.size()
                if out and size > budget:
                    return out
                out.append(entry)
            lo = out[-1].index + 1
            group = max(1, min(FETCH_CHUNK, (budget - size) // max(size // len(out), 1) + 1))
        return out

    def serve_parked(self, now: float) -> None:
        """Answer the parked fetches that the commit has reached (once their linger is over),
        and those whose wait is over with an empty reply."""
        for identity, req in self._parked.release(self.commit, now):
            del self._tickets[identity]
            self._carried = True
            reply = self.fetch(identity, replace(req, wait_ms=0), now)
            if reply is not None:
                self._reply(identity, reply)
        for identity, req in self._parked.expire(now):
            del self._tickets[identity]
            self._reply(identity, EntriesReply(req.id, self.commit, []))

    def carried_commit(self) -> bool:
        """Whether a parked fetch carried entries out since the last call (then the store
        needs no commit notice to learn of them)."""
        carried, self._carried = self._carried, False
        return carried

    @property
    def holding(self) -> bool:
        """Whether any fetch is parked."""
        return len(self._parked) > 0

    def next_wake(self, now: float) -> float:
        return self._parked.next_wake(now)
