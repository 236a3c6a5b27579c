"""Requests that wait for the store's applied index: result waits and reads.

- WaitApplied(index, term): answered once `index` is applied, with that entry's result
  (EntryApplier.result_of);
- Query(statements, min_applied): run once `min_applied` is applied, so a linearizable read
  sees every write committed before its read index. The loop thread never runs it: it goes
  to the read pool (`PooledReads`), whose workers answer through a queue and a wake-up pipe.
Both wait in one ParkingLot, bounded by MAX_PARKED (beyond: "busy") and each by its own
timeout, capped at config.store.max_wait_ms. While the store cannot apply (a full disk) a
request that would have to wait is failed at once with a clear error, and so are the parked
ones when that happens: a wait must end with the reason, not with a timeout.

Batched answers: a requester that sent a WaitAppliedBatch understands AppliedResultBatch, so
the answers to it made in one go (one batch request, one applied batch) travel as one message.

Every answer is encoded here and checked against what the receiver can decode
(`encode_reply`): a reply too large to decode would be dropped there and leave the client to
time out, so it is replaced by an error that says why.
"""

from __future__ import annotations

import os
import queue
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import cast

from zraft.config import StoreSettings
from zraft.procs.applying import EntryApplier
from zraft.procs.parking import ParkingLot
from zraft.procs.shell import Counters
from zraft.store.reads import TIMEOUT_ERROR, TOO_LARGE_ERROR, ReadAnswer, ReadJob, ReadOptions, ReadPool
from zraft.wire.codec import MAX_HEADER_BYTES, encode
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

Frames = list[bytes]
Send = Callable[[bytes, Frames], bool]
"""Send encoded frames to a requester without blocking; False (and counted) when dropped."""
Waiting = WaitApplied | Query


def encode_reply(msg: WireMessage) -> Frames:
    """The frames of `msg`, or of an error saying why when its header is larger than a
    receiver decodes (zraft.wire.codec.MAX_HEADER_BYTES): such a reply would be dropped there."""
    frames = encode(msg)
    if len(frames[0]) <= MAX_HEADER_BYTES:
        return frames
    size = len(frames[0])
    request_id = getattr(msg, "id", 0)
    if isinstance(msg, AppliedResult):
        return encode(Error(request_id, ErrorCode.RESULT_UNAVAILABLE,
                            f"entry {msg.index} was applied, but its result ({size} bytes) is too large to "
                            f"send (at most {MAX_HEADER_BYTES} bytes)"))
    return encode(Error(request_id if isinstance(request_id, int) else 0, ErrorCode.INTERNAL,
                        f"reply too large to send: {size} bytes (at most {MAX_HEADER_BYTES} bytes)"))


class PooledReads:
    """Reads run on a `ReadPool` (zraft.store.reads), their answers brought back to the loop.

    A worker encodes its answer (the reply's size checked by `encode_reply`), puts it on a
    queue and writes one byte to a pipe whose read end is in the loop's poller; the loop
    thread, the only one that touches the RPC socket, sends what `collect` finds. Why a queue
    and a pipe rather than an inproc PUSH per worker: the pool knows nothing of ZeroMQ (it is
    to run in the api process too, under asyncio), a pipe write is safe from any thread and
    needs no socket per thread, and the answer travels by reference."""

    def __init__(self, db_path: Path, settings: StoreSettings, send: Send, stats: Counters) -> None:
        self._send = send
        self._stats = stats
        self._answers: queue.SimpleQueue[tuple[bytes, Frames, tuple[str, ...]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.timeout_s = settings.read_timeout_ms / 1000
        self._db_path = db_path
        self._settings = settings
        self.pool = self._new_pool()

    def _new_pool(self) -> ReadPool:
        settings = self._settings
        return ReadPool(str(self._db_path), self._done, workers=settings.read_workers,
                        max_queued=settings.max_queued_reads, timeout_s=self.timeout_s,
                        max_result_bytes=settings.max_result_bytes)

    def suspend(self) -> None:
        """Close every read connection: the database file is being replaced (a snapshot
        image), and a connection to the old file must not outlive it. Reads running are
        interrupted; reads queued are dropped (their clients time out). `resume` after."""
        self.pool.close()

    def resume(self) -> None:
        self.pool = self._new_pool()

    @property
    def fd(self) -> int:
        """Readable when answers wait for `collect`."""
        return self._wake_r

    def submit(self, identity: bytes, msg: Query, deadline: float) -> bool:
        """Queue the read; False when the pool's queue is full."""
        options = msg.options
        job = ReadJob(msg.statements, ReadOptions(options.associative, options.blob_array, options.qualify_columns,
                                                  max(options.db_timeout_ms, 0) / 1000),
                      deadline, (identity, msg.id))
        if self.pool.submit(job):
            return True
        self._stats["reads_busy"] += 1
        return False

    def collect(self) -> int:
        """Send the answers the workers finished (loop thread); how many."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        sent = 0
        while True:
            try:
                identity, frames, counted = self._answers.get_nowait()
            except queue.Empty:
                return sent
            for name in counted:
                self._stats[name] += 1
            self._send(identity, frames)
            sent += 1

    def gauges(self) -> dict[str, int]:
        return {"reads_queued": self.pool.queued, "reads_running": self.pool.running}

    def close(self) -> None:
        if self.pool.close():  # else a worker could still write: leave the pipe to the exit
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _done(self, job: ReadJob, answer: ReadAnswer) -> None:
        """On a worker's thread: encode the answer, queue it, wake the loop."""
        identity, request_id = job.tag
        counted: tuple[str, ...] = ("reads",)
        reply: WireMessage
        if answer.expired:
            reply = Error(request_id, ErrorCode.TIMEOUT, "read not started before its deadline: too many reads queued")
            counted += ("reads_expired",)
        elif answer.failure:
            reply = Error(request_id, ErrorCode.UNAVAILABLE, answer.failure)
            counted += ("read_failures",)
        else:
            reply = QueryResult(request_id, cast(list[JsonValue], answer.results), answer.index)
            counted += ("read_timeouts",) * answer.count(TIMEOUT_ERROR)
            counted += ("reads_too_large",) * answer.count(TOO_LARGE_ERROR)
        frames = encode_reply(reply)
        self._answers.put((identity, frames, counted))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop has wake-ups enough


class Waiters:
    """The store's parked requests; owned by the store process's loop thread."""

    def __init__(self, applier: EntryApplier, send: Send, max_wait_ms: int, stats: Counters,
                 reads: PooledReads) -> None:
        self._applier = applier
        self._send = send
        self._max_wait_s = max_wait_ms / 1000
        self._stats = stats
        self.reads = reads
        self._parked: ParkingLot[tuple[bytes, Waiting, float]] = ParkingLot(MAX_PARKED)
        self._batch_peers: OrderedDict[bytes, None] = OrderedDict()
        self._gathered: dict[bytes, list[WireMessage]] | None = None

    def __len__(self) -> int:
        return len(self._parked)

    def request(self, identity: bytes, msg: Waiting, now: float) -> bool:
        """Answer `msg` now, or park it; True when it was parked."""
        index = msg.index if isinstance(msg, WaitApplied) else msg.min_applied
        deadline = now + min(msg.timeout_ms / 1000, self._max_wait_s)
        if index <= self._applier.applied:
            self._answer(identity, msg, deadline)
        elif self._applier.disk_full:
            self._reply(identity, self._disk_full_error(msg))
        elif self._parked.park((identity, msg, deadline), index, deadline) is None:
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
            for identity, msg, deadline in ready:
                self._answer(identity, msg, deadline)
            self._send_gathered()
        return len(ready)

    def expire(self, now: float) -> None:
        for identity, msg, _ in self._parked.expire(now):
            index = msg.index if isinstance(msg, WaitApplied) else msg.min_applied
            self._reply(identity, Error(msg.id, ErrorCode.TIMEOUT,
                                        f"index {index} not applied in time (applied {self._applier.applied})"))

    def fail_for_disk(self) -> None:
        """The store cannot apply: every parked request learns why, now."""
        for identity, msg, _ in self._parked.take_all():
            self._reply(identity, self._disk_full_error(msg))

    def next_wake(self, now: float) -> float:
        return self._parked.next_wake(now)

    # == answers ================================================================================
    def _answer(self, identity: bytes, msg: Waiting, deadline: float) -> None:
        if isinstance(msg, WaitApplied):
            reply = self._applier.result_of(msg)
            if self._gathered is not None and identity in self._batch_peers:
                self._gathered.setdefault(identity, []).append(reply)
            else:
                self._reply(identity, reply)
        elif not self.reads.submit(identity, msg, deadline):
            self._reply(identity, Error(msg.id, ErrorCode.BUSY, "too many reads"))

    def _reply(self, identity: bytes, reply: WireMessage) -> bool:
        return self._send(identity, encode_reply(reply))

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
            frames = encode(AppliedResultBatch(0, rows))
            if len(frames[0]) <= MAX_HEADER_BYTES:
                self._send(identity, frames)
            else:  # too large together: one by one, each checked
                for reply in replies:
                    self._reply(identity, reply)

    def _disk_full_error(self, msg: Waiting) -> Error:
        reason = self._applier.disk_full
        if isinstance(msg, WaitApplied):
            return Error(msg.id, ErrorCode.NOT_APPLIED,
                         f"{reason}: entry {msg.index} is not applied on this node until that is resolved; "
                         f"the write's outcome is unknown (it may be committed)")
        return Error(msg.id, ErrorCode.DISK_FULL,
                     f"{reason}: this node cannot apply the log up to index {msg.min_applied} until that is resolved")
