"""rqlite's queued writes (``/db/execute?queue``, rqlite.md §8.1), node-local.

A queued request is rewritten, given a sequence number (seeded with the wall clock in ns, then
+1 per request, as rqlite does) and answered at once. A background task flushes the queue as
one log entry (one Service.execute, transaction off) when ``batch_size`` statements are waiting
or ``timeout_s`` after the first one arrived. ``wait(seq)`` returns once every request queued
up to ``seq`` has been applied (or was given up on, see below).

A flush that fails for want of a leader or in time is retried every second, as rqlite does; a
flush refused as a bad request (it can never succeed) is dropped and logged. SQL errors are
per-statement results and, as in rqlite, only visible in the counters.

The queue is bounded: a request that would take the statements waiting beyond ``capacity``
(api.max_queued_statements) is refused with Busy (503), so that clients writing faster than
the cluster applies, or while it has no leader, cannot grow the api process without limit.
rqlite blocks such a request instead; a refusal tells the client at once and holds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from zraft.api.errors import ApiError, BadRequest, Busy
from zraft.store.command import Statement

log = logging.getLogger(__name__)

Flush = Callable[[list[Statement]], Awaitable[object]]

BATCH_SIZE = 128
BATCH_TIMEOUT_S = 0.05
RETRY_S = 1.0
CAPACITY = 100_000


@dataclass
class QueueStats:
    queued: int = 0
    flushes: int = 0
    statements: int = 0
    failed_flushes: int = 0
    dropped: int = 0
    sequence_number: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class WriteQueue:
    """One per API process; used from its event loop only."""

    def __init__(self, flush: Flush, *, batch_size: int = BATCH_SIZE, timeout_s: float = BATCH_TIMEOUT_S,
                 retry_s: float = RETRY_S, capacity: int = CAPACITY) -> None:
        self._flush = flush
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.capacity = capacity
        self._seq = time.time_ns()
        self._pending: deque[tuple[int, list[Statement]]] = deque()
        self._waiting = 0  # statements queued and not yet flushed (the batch in flight included)
        self._done_seq = self._seq  # every request with a number <= this one is finished
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = QueueStats(sequence_number=self._seq)

    def enqueue(self, statements: list[Statement]) -> int:
        """Queue ``statements`` (may be empty: a barrier); returns the sequence number. Busy
        when the queue would then hold more than ``capacity`` statements."""
        if statements and self._waiting + len(statements) > self.capacity:
            raise Busy(f"write queue full: {self._waiting} statements waiting, at most {self.capacity}")
        self._seq += 1
        self._pending.append((self._seq, statements))
        self._waiting += len(statements)
        self.stats.queued += 1
        self.stats.sequence_number = self._seq
        self._ensure_task()
        if self._waiting >= self.batch_size:
            self._wakeup.set()
        return self._seq

    async def wait(self, seq: int, timeout_s: float) -> bool:
        """True once everything up to ``seq`` is flushed; False when ``timeout_s`` ran out."""
        deadline = time.monotonic() + timeout_s
        while self._done_seq < seq:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return self._done_seq >= seq
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._pending:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.timeout_s)
            except TimeoutError:
                pass
            batch: list[tuple[int, list[Statement]]] = []
            size = 0
            while self._pending and (not batch or size + len(self._pending[0][1]) <= self.batch_size):
                seq, stmts = self._pending.popleft()
                batch.append((seq, stmts))
                size += len(stmts)
            await self._flush_batch(batch)

    async def _flush_batch(self, batch: list[tuple[int, list[Statement]]]) -> None:
        statements = [s for _, stmts in batch for s in stmts]
        while statements:
            try:
                await self._flush(statements)
                self.stats.flushes += 1
                self.stats.statements += len(statements)
                break
            except BadRequest as exc:
                log.error("queued write dropped (%d statements): %s", len(statements), exc.message)
                self.stats.dropped += len(statements)
                break
            except ApiError as exc:
                self.stats.failed_flushes += 1
                log.warning("queued write flush failed, retrying in %.1fs: %s", self.retry_s, exc.message)
                await asyncio.sleep(self.retry_s)
            except Exception:  # noqa: BLE001 - a bug must not stop the queue: drop the batch, keep going
                log.exception("queued write dropped (%d statements)", len(statements))
                self.stats.dropped += len(statements)
                break
        self._waiting -= sum(len(stmts) for _, stmts in batch)
        self._done_seq = max(self._done_seq, batch[-1][0])
        self._changed.set()
