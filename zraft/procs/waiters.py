"""Requests that wait for the store's applied index: result waits and reads.

- WaitApplied(index, term): answered once `index` is applied, with that entry's result
  (EntryApplier.result_of);
- Query(statements, min_applied): run once `min_applied` is applied, so a linearizable read
  sees every write committed before its read index.
Both wait in one ParkingLot, bounded by MAX_PARKED (beyond: "busy") and each by its own
timeout, capped at config.store.max_wait_ms. While the store cannot apply (a full disk) a
request that would have to wait is failed at once with a clear error, and so are the parked
ones when that happens: a wait must end with the reason, not with a timeout.

Batched answers: a requester that sent a WaitAppliedBatch understands AppliedResultBatch, so
the answers to it made in one go (one batch request, one applied batch) travel as one message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from zraft.procs.applying import EntryApplier
from zraft.procs.parking import ParkingLot
from zraft.procs.shell import Counters
from zraft.wire.messages import (
    AppliedResult,
    AppliedResultBatch,
    AppliedRow,
    Error,
    ErrorCode,
    FailedRow,
    JsonValue,
    Query,
    QueryResult,
    WaitApplied,
    WaitAppliedBatch,
    WireMessage,
)

MAX_PARKED = 100_000
MAX_BATCH_PEERS = 1024
"""Requesters remembered as understanding AppliedResultBatch (least recent forgotten)."""

Reply = Callable[[bytes, WireMessage], bool]
Waiting = WaitApplied | Query


class Waiters:
    """The store's parked requests; owned by the store process's loop thread."""

    def __init__(self, applier: EntryApplier, reply: Reply, max_wait_ms: int, stats: Counters) -> None:
        self._applier = applier
        self._reply = reply
        self._max_wait_s = max_wait_ms / 1000
        self._stats = stats
        self._parked: ParkingLot[tuple[bytes, Waiting]] = ParkingLot(MAX_PARKED)
        self._batch_peers: OrderedDict[bytes, None] = OrderedDict()
        self._gathered: dict[bytes, list[WireMessage]] | None = None

    def __len__(self) -> int:
        return len(self._parked)

    def request(self, identity: bytes, msg: Waiting, now: float) -> bool:
        """Answer `msg` now, or park it; True when it was parked."""
        index = msg.index if isinstance(msg, WaitApplied) else msg.min_applied
        if index <= self._applier.applied:
            self._answer(identity, msg)
        elif self._applier.disk_full:
            self._reply(identity, self._disk_full_error(msg))
        elif self._parked.park((identity, msg), index, now + min(msg.timeout_ms / 1000, self._max_wait_s)) is None:
            self._reply(identity, Error(msg.id, ErrorCode.BUSY, "too many waiting requests"))
        else:
            return True
        return False

    def request_batch(self, identity: bytes, msg: WaitAppliedBatch, now: float) -> bool:
        """Each row as a WaitApplied of its own; True when any was parked."""
        self._batch_peers[identity] = None
        self._batch_peers.move_to_end(identity)
        if len(self._batch_peers) > MAX_BATCH_PEERS:
            self._batch_peers.popitem(last=False)
        parked = False
        with_gathering = self._gather()
        for row in msg.requests:
            wait = WaitApplied(row.id, row.index, row.term, row.timeout_ms, row.options)
            parked = self.request(identity, wait, now) or parked
        if with_gathering:
            self._send_gathered()
        return parked

    def release(self, now: float) -> int:
        """Answer what the applied index now covers; how many were answered."""
        ready = self._parked.release(self._applier.applied, now)
        if ready:
            self._gather()
            for identity, msg in ready:
                self._answer(identity, msg)
            self._send_gathered()
        return len(ready)

    def expire(self, now: float) -> None:
        for identity, msg in self._parked.expire(now):
            index = msg.index if isinstance(msg, WaitApplied) else msg.min_applied
            self._reply(identity, Error(msg.id, ErrorCode.TIMEOUT,
                                        f"index {index} not applied in time (applied {self._applier.applied})"))

    def fail_for_disk(self) -> None:
        """The store cannot apply: every parked request learns why, now."""
        for identity, msg in self._parked.take_all():
            self._reply(identity, self._disk_full_error(msg))

    def next_wake(self, now: float) -> float:
        return self._parked.next_wake(now)

    # == answers ================================================================================
    def _answer(self, identity: bytes, msg: Waiting) -> None:
        if isinstance(msg, WaitApplied):
            reply = self._applier.result_of(msg)
            if self._gathered is not None and identity in self._batch_peers:
                self._gathered.setdefault(identity, []).append(reply)
            else:
                self._reply(identity, reply)
            return
        options = msg.options
        applied, results = self._applier.db.query_with_index(
            msg.statements, associative=options.associative, blob_array=options.blob_array,
            timeout_s=options.db_timeout_ms / 1000 if options.db_timeout_ms > 0 else None,
            qualify_columns=options.qualify_columns)
        rows: list[JsonValue] = [*results]
        self._reply(identity, QueryResult(msg.id, rows, applied))

    def _gather(self) -> bool:
        """Start gathering answers to batch peers; False if already gathering."""
        if self._gathered is not None:
            return False
        self._gathered = {}
        return True

    def _send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, None
        for identity, replies in (gathered or {}).items():
            if len(replies) == 1:
                self._reply(identity, replies[0])
                continue
            rows: list[AppliedRow | FailedRow] = []
            for reply in replies:
                if isinstance(reply, AppliedResult):
                    rows.append(AppliedRow(reply.id, reply.index, reply.result))
                else:
                    assert isinstance(reply, Error)
                    rows.append(FailedRow(reply.id, reply.code, reply.message, reply.leader))
            self._reply(identity, AppliedResultBatch(0, rows))

    def _disk_full_error(self, msg: Waiting) -> Error:
        reason = self._applier.disk_full
        if isinstance(msg, WaitApplied):
            return Error(msg.id, ErrorCode.NOT_APPLIED,
                         f"{reason}: entry {msg.index} is not applied on this node until space is freed; "
                         f"the write's outcome is unknown (it may be committed)")
        return Error(msg.id, ErrorCode.DISK_FULL,
                     f"{reason}: this node cannot apply the log up to index {msg.min_applied} until space is freed")
