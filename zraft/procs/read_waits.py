"""Read-index requests waiting for the core's answer.

A ReadIndex request (from the api, for a linearizable read) is handed to the core under a
fresh read id; the core answers with a ReadState in a later Ready, once a quorum round has
confirmed its leadership (or, on a follower, once the leader answered). Until then the
request waits here, in arrival order, with one deadline each (config.api.request_timeout_ms):
- answered by `answer` from the Ready's read states;
- failed with a timeout by `expire` once its deadline passes;
- failed all at once by `fail_all` when the leader changes or the core is rebuilt, since
  the core forgets its read rounds then and would never answer them.
Bounded by config.api.max_in_flight: beyond that a request is refused as busy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from zraft.procs.shell import Counters
from zraft.raft import RaftCore, ReadState
from zraft.wire.messages import Error, ErrorCode, ReadIndex, ReadIndexReply, WireMessage

Reply = Callable[[bytes, WireMessage], bool]


@dataclass(slots=True)
class _Waiting:
    identity: bytes
    request_id: int
    deadline: float


class ReadIndexWaits:
    """Pending read-index requests; owned by the raft process's loop thread."""

    def __init__(self, reply: Reply, capacity: int, timeout_s: float, stats: Counters) -> None:
        self._reply = reply
        self._capacity = capacity
        self._timeout_s = timeout_s
        self._stats = stats
        self._waiting: dict[int, _Waiting] = {}  # by read id, in arrival order
        self._read_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._waiting)

    def start(self, identity: bytes, req: ReadIndex, core: RaftCore, now: float) -> Error | None:
        """Ask the core for a read point; an Error when that cannot be done now."""
        if len(self._waiting) >= self._capacity:
            return Error(req.id, ErrorCode.BUSY, "too many pending reads", leader=core.leader)
        read_id = next(self._read_ids)
        if not core.read_index(read_id):  # as rqlite says it; the api answers 503
            return Error(req.id, ErrorCode.NOT_LEADER, "leader not found")
        self._waiting[read_id] = _Waiting(identity, req.id, now + self._timeout_s)
        return None

    def answer(self, states: tuple[ReadState, ...]) -> None:
        for state in states:
            waiting = self._waiting.pop(state.request_id, None)
            if waiting is not None:
                self._reply(waiting.identity, ReadIndexReply(waiting.request_id, state.index))

    def expire(self, now: float, leader: int) -> None:
        while self._waiting:
            read_id, waiting = next(iter(self._waiting.items()))
            if waiting.deadline > now:
                return
            del self._waiting[read_id]
            self._stats["reads_timed_out"] += 1
            self._reply(waiting.identity, Error(waiting.request_id, ErrorCode.TIMEOUT, "read index timed out",
                                                leader=leader))

    def fail_all(self, code: ErrorCode, message: str, leader: int) -> None:
        waiting, self._waiting = self._waiting, {}
        for item in waiting.values():
            self._reply(item.identity, Error(item.request_id, code, message, leader=leader))

    def next_deadline(self) -> float:
        """The earliest deadline (inf when nothing waits): arrival order is deadline order."""
        if not self._waiting:
            return float("inf")
        return next(iter(self._waiting.values())).deadline
