"""The named parts of the process shells, alone: no sockets, no processes."""

from __future__ import annotations

import logging
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from zraft.procs.lag import LagClock
from zraft.procs.parking import ParkingLot
from zraft.procs.shell import Counters, Ticker


# == ParkingLot =================================================================================
def test_items_are_released_by_index_in_index_order_and_expire_by_deadline() -> None:
    lot: ParkingLot[str] = ParkingLot(10)
    lot.park("c", index=7, deadline=5.0)
    lot.park("a", index=3, deadline=9.0)
    lot.park("b", index=3, deadline=1.0)
    assert lot.release(2, now=0.0) == [] and len(lot) == 3
    assert lot.release(3, now=0.5) == ["a", "b"]  # same index: in the order parked
    assert lot.expire(4.0) == [] and lot.expire(5.0) == ["c"] and len(lot) == 0
    assert lot.next_wake(5.0) == float("inf") and lot.lowest_index() is None


def test_not_before_holds_a_reached_item_until_its_time() -> None:
    lot: ParkingLot[str] = ParkingLot(10)
    lot.park("linger", index=1, deadline=10.0, not_before=2.0)
    assert lot.release(5, now=1.0) == []
    assert lot.next_wake(1.0) == 2.0
    assert lot.release(5, now=2.0) == ["linger"]


def test_capacity_bounds_and_cancel_frees_a_place() -> None:
    lot: ParkingLot[int] = ParkingLot(2)
    first = lot.park(1, 1, 1.0)
    assert lot.park(2, 1, 1.0) is not None and lot.park(3, 1, 1.0) is None
    assert first is not None
    lot.cancel(first)
    assert lot.park(3, 1, 1.0) is not None
    assert lot.release(1, 0.0) == [2, 3]


def test_take_all_empties_the_lot() -> None:
    lot: ParkingLot[int] = ParkingLot(10)
    for i in range(5):
        lot.park(i, index=10 - i, deadline=float(i))
    assert lot.take_all() == [0, 1, 2, 3, 4] and len(lot) == 0 and lot.release(99, 99.0) == []


def test_handed_back_items_do_not_pile_up_in_the_heaps() -> None:
    """Items released by index linger in the deadline heap (and expired ones in the index
    heap) until compacted: a long run must stay bounded."""
    lot: ParkingLot[int] = ParkingLot(100)
    for i in range(20_000):
        lot.park(i, index=i, deadline=i + 1_000_000.0)  # released long before their deadline
        lot.park(-i, index=10**12, deadline=float(i))    # expired, index never reached
        lot.release(i, float(i))
        lot.expire(float(i))
    assert len(lot) <= 2
    assert len(lot._by_index) + len(lot._by_deadline) < 1000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["park", "release", "expire", "cancel"]),
                          st.integers(0, 20), st.integers(0, 20), st.integers(0, 5)), max_size=60))
def test_parking_lot_matches_a_naive_table(ops: list[tuple[str, int, int, int]]) -> None:
    lot: ParkingLot[int] = ParkingLot(8)
    naive: dict[int, tuple[int, float, float]] = {}
    tickets = {}
    reached: set[int] = set()
    now = 0.0
    for n, (op, index, deadline, linger) in enumerate(ops):
        now += 0.5
        if op == "park":
            ticket = lot.park(n, index, now + deadline, not_before=now + min(linger, deadline))
            assert (ticket is None) == (len(naive) >= 8)
            if ticket is not None:
                naive[n] = (index, now + deadline, now + min(linger, deadline))
                tickets[n] = ticket
        elif op == "release":  # an index once reached stays reached (commit indexes only grow)
            got = lot.release(index, now)
            reached.update(k for k, (i, _, _) in naive.items() if i <= index)
            assert sorted(got) == sorted(k for k in reached if k in naive and naive[k][2] <= now)
            for k in got:
                del naive[k]
        elif op == "expire":
            got = lot.expire(now)
            assert sorted(got) == sorted(k for k, (_, d, _) in naive.items() if d <= now)
            for k in got:
                del naive[k]
        elif naive:
            victim = random.Random(n).choice(sorted(naive))
            lot.cancel(tickets[victim])
            del naive[victim]
        assert len(lot) == len(naive)


# == LagClock =================================================================================
def test_lag_is_zero_when_caught_up_and_unknown_when_behind_from_the_start() -> None:
    lag = LagClock()
    lag.heard(5, at_most_then=10.0, applied=0)  # behind at the first hearing: since when?
    assert lag.lag_ms(11.0) is None
    lag.applied_to(5)
    assert lag.lag_ms(11.0) == 0


def test_lag_counts_from_the_last_moment_the_commit_was_known_applied() -> None:
    lag = LagClock()
    lag.heard(3, at_most_then=100.0, applied=3)   # caught up at 100.0
    lag.heard(9, at_most_then=104.0, applied=3)   # committed after 100.0
    assert lag.lag_ms(105.0) == 5000
    lag.applied_to(9)
    assert lag.lag_ms(105.0) == 0 and lag.known_commit == 9


# == Ticker ===================================================================================
def test_ticker_runs_what_is_due_and_skips_a_long_stall() -> None:
    stats = Counters(logging.getLogger("test"))
    ticker = Ticker(0.01, max_burst=5, now=0.0, stats=stats, log=logging.getLogger("test"))
    assert ticker.due(0.005) == 0
    assert ticker.due(0.0305) == 3
    assert ticker.due(10.0) == 5 and stats["ticks_skipped"] == 1  # not 997 elections at once
    assert ticker.next_at == 10.0 + 0.01
    ticker.pause_until(20.0)
    assert ticker.due(20.005) == 0 and ticker.due(20.01) == 1


def test_bad_input_is_logged_at_powers_of_two(caplog) -> None:
    stats = Counters(logging.getLogger("zraft.test"))
    with caplog.at_level(logging.WARNING, logger="zraft.test"):
        for _ in range(9):
            stats.bad("junk", "a bad frame")
    assert stats["junk"] == 9 and len(caplog.records) == 4  # 1st, 2nd, 4th, 8th
