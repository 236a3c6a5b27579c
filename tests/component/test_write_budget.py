"""Writes that cannot wedge the log: an entry's work is bounded in SQLite VM steps.

A never-ending write (a recursive CTE without a limit) is aborted identically on every node,
whatever its batching, restarts or configuration, with the same error result, and the nodes
go on applying. The budget travels in the entry (``Command.budget``, stamped by the
proposer), so the entry's value decides, not the applying node's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from zraft.store import Command, Database, Statement, encode_command
from zraft.store.budget import exceeded_message, interval_for

NEVER_ENDING = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) INSERT INTO t(v) SELECT x FROM c"
NEVER_ENDING_READ = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def stamped(*sql: str, budget: int = 200_000, tx: bool = False, read_only: bool = False, seed: int = 1) -> bytes:
    return encode_command(Command.stamped([Statement(s) for s in sql], tx, read_only, time_ms=1_000, seed=seed,
                                          budget=budget))


def workload(budget: int) -> list[tuple[int, bytes | None]]:
    payloads = [
        stamped("CREATE TABLE t(id INTEGER PRIMARY KEY, v)", budget=budget),
        stamped("INSERT INTO t(v) VALUES(random())", budget=budget, seed=2),
        stamped(NEVER_ENDING, budget=budget),
        stamped("INSERT INTO t(v) VALUES('after')", budget=budget),
        stamped("INSERT INTO t(v) VALUES('a')", NEVER_ENDING, "INSERT INTO t(v) VALUES('b')", budget=budget),
        stamped("INSERT INTO t(v) VALUES('tx')", NEVER_ENDING, budget=budget, tx=True),
        stamped("INSERT OR ROLLBACK INTO t(id, v) VALUES(1, 'dup')", "INSERT INTO t(v) VALUES('kept')", budget=budget),
        stamped(NEVER_ENDING_READ, budget=budget, read_only=True),
        stamped("INSERT INTO t(v) VALUES(random())", budget=budget),
    ]
    return list(enumerate(payloads, start=1))


def run(path: Path, entries: list[tuple[int, bytes | None]], batch: int, restart_at: int = 0) -> tuple[Any, Any]:
    db = Database(path)
    results: list[Any] = []
    pos = 0
    while pos < len(entries):
        take = entries[pos:pos + batch]
        if restart_at and take[0][0] <= restart_at < take[-1][0]:
            take = [e for e in take if e[0] <= restart_at]
        results += [r.render() for r in db.apply_entries(take)]
        pos += len(take)
        if take[-1][0] == restart_at:
            db.close()
            db = Database(path)
    rows = db.query([Statement("SELECT * FROM t ORDER BY id")])
    db.close()
    return results, rows


def test_a_never_ending_write_is_aborted_identically_and_applying_goes_on(tmp_path: Path) -> None:
    entries = workload(200_000)
    one = run(tmp_path / "one.db", entries, batch=1)
    all_ = run(tmp_path / "all.db", entries, batch=len(entries))
    three = run(tmp_path / "three.db", entries, batch=3, restart_at=4)
    assert one == all_ == three
    results, rows = one
    over = {"error": exceeded_message(200_000)}
    assert results[2] == [over]
    assert results[3] == [{"last_insert_id": 2, "rows_affected": 1}]
    assert results[4] == [{"last_insert_id": 3, "rows_affected": 1}, over, over]  # the entry's budget is spent
    assert results[5] == [{"last_insert_id": 4, "rows_affected": 1}, over]  # all or nothing: undone
    assert results[6] == [{"error": "UNIQUE constraint failed: t.id"}, {"last_insert_id": 4, "rows_affected": 1}]
    assert results[7] == [over]  # a strong read is bounded too
    assert results[8] == [{"last_insert_id": 5, "rows_affected": 1}]
    assert [r[1] for r in rows[0]["values"]][1:4] == ["after", "a", "kept"]


def test_the_entrys_budget_decides_not_the_nodes(tmp_path: Path) -> None:
    """Two nodes, the same entries: one stamped with a small budget, one with a large one.
    Whatever their configuration, nodes apply what the entry says."""
    heavy = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000) INSERT INTO t(v) SELECT x FROM c"
    for budget, fails in ((100_000, True), (10_000_000, False)):
        entries = [(1, stamped("CREATE TABLE t(id INTEGER PRIMARY KEY, v)", budget=budget)),
                   (2, stamped(heavy, budget=budget))]
        a, _ = run(tmp_path / f"a{budget}.db", entries, batch=1)
        b, _ = run(tmp_path / f"b{budget}.db", entries, batch=2)
        assert a == b
        assert ("error" in a[1][0]) is fails


def test_the_abort_point_is_exact_across_restarts_and_batching(tmp_path: Path) -> None:
    """Around the exact step count of a statement, a budget one interval smaller fails and one
    interval larger passes, on a fresh connection and on one that ran it before."""
    rows = 2_000
    heavy = f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {rows}) INSERT INTO t(v) SELECT x FROM c"
    budget = 44_000  # ~22 steps a row
    step = interval_for(budget)
    verdicts: dict[int, list[bool]] = {}
    for b in range(budget - 12 * step, budget + 12 * step, step):
        entries = [(1, stamped("CREATE TABLE t(id INTEGER PRIMARY KEY, v)", budget=b))]
        entries += [(i, stamped(heavy, "DELETE FROM t", budget=b)) for i in range(2, 5)]
        one, _ = run(tmp_path / f"one{b}.db", entries, batch=1, restart_at=3)
        all_, _ = run(tmp_path / f"all{b}.db", entries, batch=4)
        assert one == all_
        verdicts[b] = ["error" in r[0] for r in one[1:]]
        assert len(set(verdicts[b])) == 1, verdicts  # the same statement, the same verdict, every time
    outcomes = [v[0] for _, v in sorted(verdicts.items())]
    assert outcomes[0] and not outcomes[-1] and outcomes == sorted(outcomes, reverse=True)


def test_unstamped_entries_have_no_budget(tmp_path: Path) -> None:
    heavy = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50000) SELECT count(*) FROM c"
    with Database(tmp_path / "db.sqlite") as db:
        (out,) = db.apply_entries([(1, encode_command(Command([Statement(heavy)])))])
        assert out.render() == [{"columns": ["count(*)"], "types": ["integer"], "values": [[50000]]}]


def test_a_never_ending_write_takes_bounded_time(tmp_path: Path) -> None:
    """The default budget (store.max_write_steps) stops a never-ending write in seconds."""
    with Database(tmp_path / "db.sqlite") as db:
        start = time.monotonic()
        out = db.apply_entries([(1, encode_command(Command.stamped([Statement("CREATE TABLE t(v)")]))),
                                (2, encode_command(Command.stamped([Statement(NEVER_ENDING)], budget=20_000_000))),
                                (3, encode_command(Command.stamped([Statement("INSERT INTO t VALUES(1)")])))])
        assert time.monotonic() - start < 30
        assert out[1].render() == [{"error": exceeded_message(20_000_000)}]
        assert out[2].render() == [{"last_insert_id": 1, "rows_affected": 1}]


@pytest.mark.parametrize("budget", [1, 15, 16, 17, 10_000, 160_001])
def test_interval_is_a_function_of_the_budget_alone(budget: int) -> None:
    assert 1 <= interval_for(budget) <= max(1, budget)
