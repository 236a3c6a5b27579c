"""Requests parked until an index is reached, or until their deadline: one table for all.

Three kinds of request wait on an index in zraft's shells:
- the store's result waits (WaitApplied: until the entry is applied),
- the store's reads (Query: until `min_applied` is applied),
- the raft process's long-poll fetches (FetchEntries: until the commit reaches `start`, and
  then, for a store that asked to linger, a few ms more to gather a bigger batch).

`ParkingLot` holds them: `release(index, now)` hands back every item whose index is reached
(and whose `not_before` time has come), oldest index first; `expire(now)` every item whose
deadline passed. Both are O(k log n) for k items handed back (two heaps, lazy deletion), so a
store with 100,000 parked requests pays only for what it answers. It is bounded: `park`
refuses beyond `capacity`, and the caller answers "busy".

Owned by one loop thread; holds only the caller's items and never calls back into it.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(order=True, slots=True)
class Ticket(Generic[T]):
    """One parked item; `cancel` it through the lot that issued it."""

    index: int
    deadline: float
    seq: int
    not_before: float = field(compare=False, default=0.0)
    item: T | None = field(compare=False, default=None)
    done: bool = field(compare=False, default=False)


class ParkingLot(Generic[T]):
    """Items parked until an index or a deadline."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_index: list[Ticket[T]] = []
        self._by_deadline: list[tuple[float, int, Ticket[T]]] = []
        self._ripening: list[tuple[float, int, Ticket[T]]] = []  # index reached, not_before not yet
        self._seq = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def park(self, item: T, index: int, deadline: float, not_before: float = 0.0) -> Ticket[T] | None:
        """Park `item` until `index` is reached (and `not_before` has come) or `deadline`
        passes; None when the lot is full."""
        if self._count >= self.capacity:
            return None
        if len(self._by_index) + len(self._by_deadline) > 4 * self._count + 256:
            self._compact()
        ticket = Ticket(index, deadline, next(self._seq), not_before, item)
        heapq.heappush(self._by_index, ticket)
        heapq.heappush(self._by_deadline, (deadline, ticket.seq, ticket))
        self._count += 1
        return ticket

    def cancel(self, ticket: Ticket[T]) -> None:
        """Forget a parked item (it is never handed back)."""
        if not ticket.done:
            ticket.done = True
            self._count -= 1

    def release(self, index: int, now: float) -> list[T]:
        """Every item whose index is at most `index` and whose not_before has come, in the
        order of their indexes (then of parking)."""
        out: list[tuple[int, int, T]] = []
        while self._by_index and self._by_index[0].index <= index:
            ticket = heapq.heappop(self._by_index)
            if ticket.done:
                continue
            if ticket.not_before > now:
                heapq.heappush(self._ripening, (ticket.not_before, ticket.seq, ticket))
                continue
            out.append(self._take(ticket))
        while self._ripening and self._ripening[0][0] <= now:
            ticket = heapq.heappop(self._ripening)[2]
            if not ticket.done:
                out.append(self._take(ticket))
        out.sort(key=lambda taken: taken[:2])
        return [item for _index, _seq, item in out]

    def expire(self, now: float) -> list[T]:
        """Every item whose deadline is at most `now`, earliest deadline first."""
        out: list[T] = []
        while self._by_deadline and self._by_deadline[0][0] <= now:
            ticket = heapq.heappop(self._by_deadline)[2]
            if not ticket.done:
                out.append(self._take(ticket)[2])
        return out

    def take_all(self) -> list[T]:
        """Every parked item, emptying the lot (in the order they were parked)."""
        tickets = sorted((t for t in self._by_index if not t.done), key=lambda t: t.seq)
        tickets += sorted((t for _, _, t in self._ripening if not t.done), key=lambda t: t.seq)
        self._by_index, self._by_deadline, self._ripening = [], [], []
        self._count = 0
        for ticket in tickets:
            ticket.done = True
        return [t.item for t in tickets if t.item is not None]

    def next_wake(self, now: float) -> float:
        """When `release` or `expire` may next hand something back by time alone: the
        earliest deadline or ripening time (inf when nothing is parked)."""
        self._prune()
        wake = float("inf")
        if self._by_deadline:
            wake = self._by_deadline[0][0]
        if self._ripening:
            wake = min(wake, self._ripening[0][0])
        return wake

    def lowest_index(self) -> int | None:
        """The smallest index anything waits for (None when nothing does)."""
        self._prune()
        return self._by_index[0].index if self._by_index else None

    def _take(self, ticket: Ticket[T]) -> tuple[int, int, T]:
        ticket.done = True
        self._count -= 1
        assert ticket.item is not None
        return ticket.index, ticket.seq, ticket.item

    def _compact(self) -> None:
        """Drop handed-back and cancelled tickets from the heaps: an item released by index
        stays in the deadline heap (and an expired one in the index heap) until then."""
        self._by_index = [t for t in self._by_index if not t.done]
        heapq.heapify(self._by_index)
        self._by_deadline = [e for e in self._by_deadline if not e[2].done]
        heapq.heapify(self._by_deadline)
        self._ripening = [e for e in self._ripening if not e[2].done]
        heapq.heapify(self._ripening)

    def _prune(self) -> None:
        while self._by_deadline and self._by_deadline[0][2].done:
            heapq.heappop(self._by_deadline)
        while self._ripening and self._ripening[0][2].done:
            heapq.heappop(self._ripening)
        while self._by_index and self._by_index[0].done:
            heapq.heappop(self._by_index)
