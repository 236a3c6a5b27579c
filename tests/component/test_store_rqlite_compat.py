"""Store behaviour the rqlite client suites depend on: read-only (strong query) commands,
zraft's own table hidden from schema listings, declared types after a schema change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zraft.wire.sql import statement_from_pair as _statement
from zraft.store import Command, Database, Statement, encode_command


def entry(*sql: str, read_only: bool = False, tx: bool = False) -> bytes:
    return encode_command(Command([Statement(s) for s in sql], tx, read_only))


def apply(db: Database, index: int, data: bytes) -> list[dict[str, Any]]:
    (result,) = db.apply_entries([(index, data)])
    return result.render()


def test_read_only_command_refuses_writes_and_changes_nothing(tmp_path: Path) -> None:
    with Database(tmp_path / "db") as db:
        apply(db, 1, entry("CREATE TABLE t(a)", "INSERT INTO t VALUES(1)"))
        out = apply(db, 2, entry("INSERT INTO t VALUES(2)", "SELECT count(*) FROM t", "DELETE FROM t",
                                 read_only=True))
        assert out == [{"error": "attempt to change database via query operation"},
                       {"columns": ["count(*)"], "types": ["integer"], "values": [[1]]},
                       {"error": "attempt to change database via query operation"}]
        assert db.query([Statement("SELECT count(*) FROM t")])[0]["values"] == [[1]]
        assert db.applied_index() == 2


def test_read_only_command_results_have_query_shapes(tmp_path: Path) -> None:
    with Database(tmp_path / "db") as db:
        apply(db, 1, entry("CREATE TABLE t(a)"))
        (result,) = db.apply_entries([(2, entry("SELECT * FROM t", read_only=True))])
        assert result.render(associative=True) == [{"types": {"a": ""}, "rows": []}]


def test_zraft_meta_is_hidden_from_schema_listings(tmp_path: Path) -> None:
    with Database(tmp_path / "db") as db:
        apply(db, 1, entry("CREATE TABLE foo(a)"))
        for sql in ("SELECT name FROM sqlite_master WHERE type='table'", "SELECT * FROM sqlite_schema",
                    "SELECT name FROM main.sqlite_master", "PRAGMA table_list"):
            [res] = db.query([Statement(sql)])
            flat = [v for row in res.get("values", []) for v in row]
            assert "_zraft_meta" not in flat and not any(
                isinstance(v, str) and "_zraft_meta" in v for v in flat), sql
            assert "foo" in flat, sql
        # the execute path hides it too
        out = apply(db, 2, entry("SELECT name FROM sqlite_master"))
        assert out[0]["values"] == [["foo"]]


def test_declared_types_follow_a_schema_change_between_reads(tmp_path: Path) -> None:
    """pyrqlite DeclTypesTests: same table name recreated with other declared types."""
    with Database(tmp_path / "db") as db:
        apply(db, 1, entry("CREATE TABLE test(f NUMBER, b BLOB)", "INSERT INTO test(b) VALUES(0)"))
        assert db.query([Statement("SELECT b FROM test")])[0]["types"] == ["blob"]
        apply(db, 2, entry("DROP TABLE test", "CREATE TABLE test(f float, b bool)", "INSERT INTO test(b) VALUES(0)"))
        assert db.query([Statement("SELECT b FROM test")])[0]["types"] == ["bool"]
        apply(db, 3, entry("DELETE FROM test"))
        assert db.query([Statement("SELECT f FROM test")])[0]["types"] == ["float"]


def test_query_blob_parameters_are_decoded_like_writes(tmp_path: Path) -> None:
    stmt = _statement(["SELECT x, typeof(?) FROM b WHERE x = ?", [{"b64": "AA=="}, {"b64": "AAE="}]])
    assert stmt == Statement("SELECT x, typeof(?) FROM b WHERE x = ?", [b"\x00", b"\x00\x01"])
    assert _statement(["SELECT :a", {"a": {"b64": "AAE="}}]).params == {"a": b"\x00\x01"}
    with pytest.raises(ValueError):
        _statement(["SELECT ?", [{"hex": "00"}]])
    with Database(tmp_path / "db") as db:
        apply(db, 1, encode_command(Command([Statement("CREATE TABLE b(x BLOB)"),
                                             Statement("INSERT INTO b VALUES(?)", [b"\x00\x01"])])))
        [res] = db.query([stmt])
        assert res["values"] == [["AAE=", "blob"]]


def test_db_timeout_interrupts_a_slow_query(tmp_path: Path) -> None:
    slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
            "SELECT count(*) FROM c")
    with Database(tmp_path / "db") as db:
        _, [res, fast] = db.query_with_index([Statement(slow), Statement("SELECT 1")], timeout_s=0.05)
        assert res == {"error": "query timeout"}
        assert fast["values"] == [[1]]


def test_qualify_columns_names_table_columns(tmp_path: Path) -> None:
    with Database(tmp_path / "db") as db:
        apply(db, 1, entry("CREATE TABLE foo(id INTEGER, name TEXT)", "INSERT INTO foo VALUES(1, 'a')"))
        _, [res] = db.query_with_index([Statement("SELECT id, name, 1 AS one FROM foo")], qualify_columns=True)
        assert res["columns"] == ["foo.id", "foo.name", "one"]
        _, [res] = db.query_with_index([Statement("SELECT id FROM foo")])
        assert res["columns"] == ["id"]
