"""Snapshots, restores, the read path's refusal to write, and read/write classification."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw
import pytest

from zraft.store import Command, Database, Statement, encode_command, reads


def insert(i: int) -> bytes:
    return encode_command(Command([Statement("INSERT INTO t(v, b) VALUES(?, ?)", [i, bytes([i % 256])])]))


def counts(db: Database) -> list[object]:
    rows = db.query([Statement("SELECT count(*), total(v) FROM t")])[0]["values"]
    assert isinstance(rows, list)
    return list(rows[0])


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(tmp_path / "db.sqlite")
    create = encode_command(Command([Statement("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER, b BLOB)")]))
    d.apply_entries([(1, create)] + [(i, insert(i)) for i in range(2, 101)])
    return d


def test_snapshot_restore_round_trip(db: Database, tmp_path: Path) -> None:
    snap = tmp_path / "snap.db"
    assert db.snapshot_to(snap) == 100
    before = db.query([Statement("SELECT * FROM t")], blob_array=True)
    db.apply_entries([(i, insert(i)) for i in range(101, 151)])
    assert db.applied_index() == 150

    assert db.restore_from(snap) == 100
    assert db.applied_index() == 100
    assert db.query([Statement("SELECT * FROM t")], blob_array=True) == before
    # the log continues from the snapshot's index, with the same results as the first time
    again = db.apply_entries([(i, insert(i)) for i in range(101, 103)])
    assert [r.render() for r in again] == [[{"last_insert_id": 100, "rows_affected": 1}],
                                           [{"last_insert_id": 101, "rows_affected": 1}]]  # fmt: skip


def test_snapshot_installs_on_a_fresh_node(db: Database, tmp_path: Path) -> None:
    snap = tmp_path / "snap.db"
    db.snapshot_to(snap)
    with Database(tmp_path / "other.db") as other:
        assert other.restore_from(snap) == 100
        assert counts(other) == counts(db)
        other.apply_entries([(101, insert(101))])
        db.apply_entries([(101, insert(101))])
        meta = [Statement("SELECT * FROM _zraft_meta")]
        assert other.query(meta) == db.query(meta)


def test_snapshot_file_is_self_contained(db: Database, tmp_path: Path) -> None:
    snap = tmp_path / "snap.db"
    db.snapshot_to(snap)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("snap")) == ["snap.db"]
    conn = apsw.Connection(str(snap), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA journal_mode").get == "delete"
    assert conn.execute("SELECT count(*) FROM t").get == 99


def test_restore_of_a_foreign_file_with_other_page_size(db: Database, tmp_path: Path) -> None:
    foreign = tmp_path / "upload.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("PRAGMA page_size=1024; CREATE TABLE q(a); INSERT INTO q VALUES(1), (2)")
    conn.close()
    assert db.restore_from(foreign, applied_index=500) == 500
    assert db.query([Statement("SELECT a FROM q"), Statement("SELECT * FROM t")]) == [
        {"columns": ["a"], "types": ["integer"], "values": [[1], [2]]},
        {"error": "no such table: t"},
    ]
    with pytest.raises(Exception, match="gap"):
        db.apply_entries([(502, None)])
    db.apply_entries([(501, None)])


def test_readers_see_old_or_new_never_a_mix(db: Database, tmp_path: Path) -> None:
    small, big = tmp_path / "small.db", tmp_path / "big.db"
    db.snapshot_to(small)
    db.apply_entries([(i, insert(i)) for i in range(101, 2001)])
    db.snapshot_to(big)
    allowed = [counts(db)]
    db.restore_from(small)
    allowed.append(counts(db))
    seen: list[list[object]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(counts(db))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(10):
            db.restore_from(big if i % 2 == 0 else small)
    finally:
        stop.set()
        reader.join()
    assert seen and all(s in allowed for s in seen)


def test_query_with_a_write_changes_nothing(db: Database) -> None:
    before = counts(db)
    results = db.query([
        Statement("INSERT INTO t(v) VALUES(1)"),
        Statement("SELECT 1; DELETE FROM t"),
        Statement("DROP TABLE t"),
        Statement("UPDATE t SET v = 0 RETURNING id"),
        Statement("SELECT count(*) FROM t"),
    ])  # fmt: skip
    write_error = {"error": "attempt to change database via query operation"}
    assert results[:4] == [write_error] * 4
    assert results[4]["values"] == [[99]]
    assert counts(db) == before and db.applied_index() == 100


def test_query_statements_share_one_snapshot_and_report_its_index(db: Database) -> None:
    index, results = db.query_with_index([Statement("SELECT count(*) FROM t"), Statement("SELECT max(id) FROM t")])
    assert index == 100 and [r["values"] for r in results] == [[[99]], [[99]]]


VERDICTS = [
    ("SELECT * FROM t", True), ("select 1; select 2", True), ("EXPLAIN DELETE FROM t", True),
    ("PRAGMA foreign_keys", True), ("WITH x AS (SELECT 1) SELECT * FROM x", True), ("SELECT 1; -- done", True),
    ("INSERT INTO t(v) VALUES(?)", False),
    ("SELECT 1; DELETE FROM t", False), ("WITH x AS (SELECT 1) DELETE FROM t", False),
    ("CREATE TABLE z(a)", False), ("SELEC 1", False), ("SELECT * FROM nosuch", False), ("BEGIN", False),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "read_only"), VERDICTS)
def test_is_read_only_uses_sqlites_verdict(db: Database, sql: str, read_only: bool) -> None:
    assert db.is_read_only(sql) is read_only


@pytest.mark.parametrize(("sql", "read_only"), VERDICTS)
def test_another_process_gets_the_same_verdict_from_the_file(db: Database, sql: str, read_only: bool) -> None:
    """zraft.store.reads is the one classifier: the api's /db/request asks it with a
    connection of its own, and must route exactly as the store would judge."""
    assert reads.all_read_only(db.path, ["SELECT 1", sql]) is read_only


def test_a_database_that_does_not_exist_yet_is_written_to(tmp_path: Path) -> None:
    assert reads.all_read_only(str(tmp_path / "none.sqlite"), ["SELECT 1"]) is False
    assert not (tmp_path / "none.sqlite").exists()
