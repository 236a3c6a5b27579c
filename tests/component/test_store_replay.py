"""Replay is exact and idempotent: batching, re-application, failures and real kill -9.

The workload mixes everything that touches the transaction scheme: single and multi
statement entries, failing statements, all-or-nothing entries, RETURNING, no-op entries,
BLOBs, SQL that reads connection state (last_insert_rowid(), changes()) and INSERT OR
ROLLBACK, which ends the whole batch transaction.

Run as ``python -m tests.component.test_store_replay child DB N SEED`` it is the process
that the kill -9 test starts and kills.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from zraft.store import Command, Database, Statement, encode_command

REPO = Path(__file__).resolve().parents[2]
Entry = tuple[int, bytes | None]


# -- workload ------------------------------------------------------------------------------


def _cmd(stmts: Sequence[tuple[str, Any]], tx: bool = False) -> bytes:
    return encode_command(Command([Statement(sql, params) for sql, params in stmts], tx))


def _insert_kv(rng: random.Random, or_rollback: bool = False) -> tuple[str, Any]:
    verb = "INSERT OR ROLLBACK" if or_rollback else "INSERT"
    key, blob = f"k{rng.randrange(150)}", rng.randbytes(rng.randrange(0, 12))
    when: int | str = rng.randrange(2**31) if rng.random() < 0.5 else f"2024-01-{rng.randrange(1, 29):02d} 10:00"
    return f"{verb} INTO kv(k, v, n, ts) VALUES(?, ?, ?, ?)", [key, blob, rng.randrange(100), when]


def _random_entry(rng: random.Random, i: int) -> bytes | None:
    roll = rng.random()
    if roll < 0.05:
        return None
    if roll < 0.40:
        return _cmd([_insert_kv(rng)])
    log = ("INSERT INTO log(entry, note) VALUES(?, last_insert_rowid() || '/' || changes())", [i])
    if roll < 0.60:
        upd = ("UPDATE kv SET n = n + 1 WHERE k = :k", {"k": f"k{rng.randrange(150)}"})
        return _cmd([_insert_kv(rng), upd, log, ("DELETE FROM kv WHERE k = ?", [f"k{rng.randrange(150)}"])])
    if roll < 0.75:
        return _cmd([log, _insert_kv(rng), ("UPDATE kv SET n = -n WHERE n > ?", [90])], tx=True)
    if roll < 0.85:
        return _cmd([("INSERT INTO log(entry, note) VALUES(?, 'ret') RETURNING id, entry", [i]), log])
    if roll < 0.90:
        return _cmd([("INSERT INTO log(entry) VALUES(?)", [i]), _insert_kv(rng, or_rollback=True), log])
    return _cmd([("INSERT INTO nosuch VALUES(?)", [i]), log])


def workload(n: int, seed: int = 7) -> list[Entry]:
    """``n`` deterministic entries, indexes 1..n."""
    rng = random.Random(seed)
    payloads: list[bytes | None] = [
        _cmd([("CREATE TABLE kv(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB, n INTEGER, ts DATETIME)", None)]),
        _cmd([("CREATE TABLE log(id INTEGER PRIMARY KEY AUTOINCREMENT, entry INTEGER, note TEXT)", None)]),
    ]
    payloads += [_random_entry(rng, i) for i in range(3, n + 1)]
    return list(enumerate(payloads, start=1))


def state_hash(db: Database) -> str:
    """Hash of every row of every table, in key order, including the replication meta."""
    tables = ["SELECT * FROM kv ORDER BY id", "SELECT * FROM log ORDER BY id", "SELECT * FROM sqlite_sequence",
              "SELECT * FROM _zraft_meta ORDER BY key"]  # fmt: skip
    index, rows = db.query_with_index([Statement(sql) for sql in tables], blob_array=True)
    return hashlib.sha256(orjson.dumps([index, rows])).hexdigest()


def apply_in_batches(db: Database, entries: Sequence[Entry], sizes: Callable[[], int]) -> list[list[Any]]:
    """Apply ``entries`` in consecutive batches; returns every entry's rendered results."""
    out: list[list[Any]] = []
    pos = 0
    while pos < len(entries):
        batch = entries[pos : pos + sizes()]
        out += [r.render() for r in db.apply_entries(batch)]
        pos += len(batch)
    return out


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], str]]:
    """state_hash of a never-interrupted node after entry k (k must not decrease)."""
    entries = workload(N_CRASH)
    db = Database(tmp_path_factory.mktemp("ref") / "ref.db")

    def at(k: int) -> str:
        start = db.applied_index()
        if k > start:
            apply_in_batches(db, entries[start:k], lambda: 50)
        return state_hash(db)

    yield at
    db.close()


# -- tests ---------------------------------------------------------------------------------

N_CRASH = 6000


def test_results_and_state_do_not_depend_on_batching(tmp_path: Path) -> None:
    entries = workload(600)
    one = Database(tmp_path / "one.db")
    rng = random.Random(3)
    many = Database(tmp_path / "many.db")
    assert apply_in_batches(one, entries, lambda: 1) == apply_in_batches(many, entries, lambda: rng.randint(1, 80))
    assert state_hash(one) == state_hash(many)
    logged = one.query([Statement("SELECT count(*) FROM log WHERE note LIKE '%/%'")])[0]["values"][0][0]
    assert logged > 100


def test_reapplying_old_entries_changes_nothing(tmp_path: Path) -> None:
    entries = workload(300)
    db = Database(tmp_path / "db.sqlite")
    apply_in_batches(db, entries[:250], lambda: 25)
    before = state_hash(db)
    replay = db.apply_entries(entries[:250])
    assert all(r.skipped and not r.results for r in replay)
    assert state_hash(db) == before and db.applied_index() == 250
    mixed = db.apply_entries(entries[240:255])  # straddles the applied index
    assert [r.skipped for r in mixed] == [True] * 10 + [False] * 5
    assert db.applied_index() == 255

    clean = Database(tmp_path / "clean.db")
    apply_in_batches(clean, entries[:255], lambda: 255)
    assert state_hash(db) == state_hash(clean)


def test_gaps_and_undecodable_entries_apply_nothing(tmp_path: Path) -> None:
    entries = workload(20)
    db = Database(tmp_path / "db.sqlite")
    db.apply_entries(entries[:5])
    before = state_hash(db)
    with pytest.raises(Exception, match="gap"):
        db.apply_entries(entries[6:8])
    with pytest.raises(Exception, match="consecutive"):
        db.apply_entries([entries[5], entries[7]])
    with pytest.raises(Exception, match="version"):
        db.apply_entries([entries[5], (7, b'{"v": 99, "tx": false, "stmts": []}')])
    assert state_hash(db) == before and db.applied_index() == 5


def test_failure_mid_batch_leaves_nothing_then_replay_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environmental error (simulated disk full) in entry 40 of a batch: no partial state."""
    import apsw

    from zraft.store import apply as apply_mod
    from zraft.store.execute import execute as real

    entries = workload(80)
    db = Database(tmp_path / "db.sqlite")
    db.apply_entries(entries[:20])
    before = state_hash(db)
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 40:
            raise apsw.FullError("database or disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(apply_mod, "execute", flaky)
    with pytest.raises(apsw.FullError):
        db.apply_entries(entries[20:80])
    assert state_hash(db) == before and db.applied_index() == 20
    monkeypatch.setattr(apply_mod, "execute", real)
    db.apply_entries(entries[:80])
    clean = Database(tmp_path / "clean.db")
    clean.apply_entries(entries[:80])
    assert state_hash(db) == state_hash(clean)


def test_failing_entry_does_not_undo_its_batch_neighbours(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    t = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"
    results = db.apply_entries([
        (1, _cmd([(t, None), ("INSERT INTO t VALUES(1, 'a')", None)])),
        (2, _cmd([("INSERT INTO t VALUES(2, 'b')", None), ("INSERT INTO t VALUES(1, 'dup')", None)], tx=True)),
        (3, _cmd([("INSERT INTO t VALUES(3, 'c')", None), ("INSERT INTO t VALUES(1, 'dup')", None),
                  ("INSERT INTO t VALUES(4, 'd')", None)])),
        (4, _cmd([("INSERT INTO t VALUES(5, 'e')", None)])),
    ])  # fmt: skip
    assert [r.render() for r in results] == [
        [{}, {"last_insert_id": 1, "rows_affected": 1}],
        [{"last_insert_id": 2, "rows_affected": 1}, {"error": "UNIQUE constraint failed: t.id"}],
        [{"last_insert_id": 3, "rows_affected": 1}, {"error": "UNIQUE constraint failed: t.id"},
         {"last_insert_id": 4, "rows_affected": 1}],
        [{"last_insert_id": 5, "rows_affected": 1}],
    ]  # fmt: skip
    assert db.query([Statement("SELECT id FROM t")])[0]["values"] == [[1], [3], [4], [5]]


def test_insert_or_rollback_ends_only_its_own_statement(tmp_path: Path) -> None:
    """ON CONFLICT ROLLBACK kills the batch transaction; the store must re-run the batch and
    still give every other entry (and the other statements of the same entry) its effect."""
    entries: list[Entry] = [
        (1, _cmd([("CREATE TABLE t(id INTEGER PRIMARY KEY)", None), ("INSERT INTO t VALUES(1)", None)])),
        (2, _cmd([("INSERT INTO t VALUES(2)", None), ("INSERT OR ROLLBACK INTO t VALUES(1)", None),
                  ("INSERT INTO t VALUES(3)", None)])),
        (3, _cmd([("INSERT INTO t VALUES(4)", None), ("INSERT OR ROLLBACK INTO t VALUES(1)", None)], tx=True)),
        (4, _cmd([("INSERT INTO t VALUES(5)", None)])),
    ]  # fmt: skip
    batched = Database(tmp_path / "batched.db")
    results = [r.render() for r in batched.apply_entries(entries)]
    assert results[1] == [{"last_insert_id": 2, "rows_affected": 1}, {"error": "UNIQUE constraint failed: t.id"},
                          {"last_insert_id": 3, "rows_affected": 1}]  # fmt: skip
    assert results[2] == [{"last_insert_id": 4, "rows_affected": 1}, {"error": "UNIQUE constraint failed: t.id"}]
    assert batched.query([Statement("SELECT id FROM t")])[0]["values"] == [[1], [2], [3], [5]]
    single = Database(tmp_path / "single.db")
    assert apply_in_batches(single, entries, lambda: 1) == results
    assert state_hash(single) == state_hash(batched)


def test_kill_9_at_random_moments_then_replay_is_exact(tmp_path: Path, reference: Callable[[int], str]) -> None:
    path = tmp_path / "node.db"
    rng = random.Random(11)
    kills = 0
    for cycle in range(6):
        returncode, applied = _run_child_and_kill(path, delay=rng.uniform(0.01, 0.08), seed=cycle)
        kills += returncode == -signal.SIGKILL and applied < N_CRASH
        with Database(path) as db:  # state after the crash is exactly some prefix of the log
            assert state_hash(db) == reference(db.applied_index())
    assert kills >= 4, "the child finished before being killed too often: make the workload longer"
    with Database(path) as db:
        apply_in_batches(db, workload(N_CRASH), lambda: 97)  # full replay from index 1
        assert db.applied_index() == N_CRASH
        assert state_hash(db) == reference(N_CRASH)


def _run_child_and_kill(path: Path, delay: float, seed: int) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "tests.component.test_store_replay", "child", str(path), str(N_CRASH), str(seed)]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    with Database(path) as db:
        return returncode, db.applied_index()


def _child(path: str, n: int, seed: int) -> None:
    """Resume from a little before the applied index (exercising skips), in random batches."""
    entries = workload(n)
    rng = random.Random(seed)
    with Database(path) as db:
        start = max(0, db.applied_index() - 20)
        print("ready", flush=True)
        apply_in_batches(db, entries[start:], lambda: rng.randint(1, 40))
    print("done", flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
