"""Exact rqlite response shapes produced by apply_entries (rendered) and query.

Expected values that carry a reference come from rqlite's own tests (rqlite/rqlite
``db/db_common_test.go``, ``system_test/single_node_test.go``) or docs (rqlite.md §1.3).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zraft.store import Command, Database, Statement, encode_command

Stmt = str | tuple[str, Any]


def cmd(*stmts: Stmt, tx: bool = False) -> bytes:
    return encode_command(Command([Statement(s) if isinstance(s, str) else Statement(*s) for s in stmts], tx))


class Node:
    """A Database plus an index counter, so each test reads like a list of requests."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.next = 1

    def execute(self, *stmts: Stmt, tx: bool = False, **render: bool) -> list[dict[str, Any]]:
        (result,) = self.db.apply_entries([(self.next, cmd(*stmts, tx=tx))])
        self.next += 1
        return result.render(**render)

    def query(self, *sql: str, **opts: bool) -> list[dict[str, Any]]:
        return self.db.query([Statement(s) for s in sql], **opts)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "db.sqlite")
    yield n
    n.db.close()


FOO = "CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT, age INTEGER)"


def test_create_insert_update_delete_shapes(node: Node) -> None:
    assert node.execute(FOO) == [{}]
    assert node.execute(("INSERT INTO foo(name, age) VALUES(?, ?)", ["fiona", 20])) == [
        {"last_insert_id": 1, "rows_affected": 1}
    ]
    node.execute("INSERT INTO foo(name, age) VALUES('declan', 30)")
    # rqlite db_common_test "update": last_insert_id is the connection's, from the earlier INSERT.
    assert node.execute("UPDATE foo SET age = age + 1") == [{"last_insert_id": 2, "rows_affected": 2}]
    assert node.execute("UPDATE foo SET age = 1 WHERE id = 99") == [{"last_insert_id": 2}]
    assert node.execute("DELETE FROM foo WHERE id = 2") == [{"last_insert_id": 2, "rows_affected": 1}]


def test_zero_row_delete_on_a_fresh_node_is_empty(node: Node) -> None:
    # rqlite Test_SingleNodeNoSQLInjection.
    node.execute("CREATE TABLE foo (id integer not null primary key, name text)")
    assert node.execute(("DELETE FROM foo WHERE name=?", ['"qux";DROP TABLE FOO'])) == [{}]


def test_connection_values_carry_across_requests_like_rqlite(node: Node) -> None:
    # rqlite Test_SingleNodeReboot-style sequence (system_test/single_node_test.go): failed
    # statements and DDL leave sqlite3_last_insert_rowid/sqlite3_changes as they were.
    node.execute("CREATE TABLE foo (id integer not null primary key, name text)")
    assert node.execute('INSERT INTO foo(name) VALUES("fiona")') == [{"last_insert_id": 1, "rows_affected": 1}]
    assert node.execute('INSERT INTO bar(name) VALUES("fiona")') == [{"error": "no such table: bar"}]
    assert node.execute("INSERT blah blah") == [{"error": 'near "blah": syntax error'}]
    assert node.execute("DROP TABLE foo") == [{"last_insert_id": 1, "rows_affected": 1}]


def test_carried_values_survive_reopen(node: Node, tmp_path: Path) -> None:
    """The carried values are part of the replicated state: a restarted node must report
    (and let SQL read) the same ones as a node that kept running."""
    node.execute(FOO, "INSERT INTO foo(name) VALUES('a'), ('b'), ('c')")
    node.db.close()
    node.db = Database(tmp_path / "db.sqlite")
    assert node.execute("CREATE TABLE bar(x)", "SELECT last_insert_rowid(), changes()") == [
        {"last_insert_id": 3, "rows_affected": 3},
        {"columns": ["last_insert_rowid()", "changes()"], "types": ["integer", "integer"], "values": [[3, 3]]},
    ]


def test_select_types_nulls_and_empty_results(node: Node) -> None:
    node.execute(FOO, "INSERT INTO foo(name) VALUES('fiona')")
    assert node.query("SELECT * FROM foo") == [
        {"columns": ["id", "name", "age"], "types": ["integer", "text", "integer"], "values": [[1, "fiona", None]]}
    ]
    assert node.query("SELECT id, name FROM foo WHERE 0") == [{"columns": ["id", "name"], "types": ["integer", "text"]}]


def test_expression_types_come_from_first_row(node: Node) -> None:
    # rqlite Test_DB_HexQuery: a BLOB in an untyped column is rendered as text.
    assert node.query("SELECT 1, 2.5, 'a', NULL, x'53514C697465'") == [
        {"columns": ["1", "2.5", "'a'", "NULL", "x'53514C697465'"], "types": ["integer", "real", "text", "", "text"],
         "values": [[1, 2.5, "a", None, "SQLite"]]}
    ]  # fmt: skip


def test_pragma_table_info_matches_rqlite(node: Node) -> None:
    # rqlite Test_DB_NotNULLField, verbatim.
    node.execute("CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT)")
    assert node.query('PRAGMA table_info("foo")') == [
        {"columns": ["cid", "name", "type", "notnull", "dflt_value", "pk"],
         "types": ["integer", "text", "text", "integer", "", "integer"],
         "values": [[0, "id", "INTEGER", 1, None, 1], [1, "name", "TEXT", 0, None, 0]]}
    ]  # fmt: skip


def test_blob_base64_and_blob_array(node: Node) -> None:
    # rqlite Test_DB_BLOB: TEXT stored in a BLOB column stays text; real BLOBs are base64.
    node.execute("CREATE TABLE foo (name TEXT, data BLOB)", "INSERT INTO foo(name, data) VALUES('fiona', 'hello')",
                 ("INSERT INTO foo(name, data) VALUES(?, ?)", ["declan", b"test"]))  # fmt: skip
    expected = {"columns": ["name", "data"], "types": ["text", "blob"],
                "values": [["fiona", "hello"], ["declan", "dGVzdA=="]]}  # fmt: skip
    assert node.query("SELECT * FROM foo") == [expected]
    as_array = node.query("SELECT * FROM foo", blob_array=True)
    assert as_array[0]["values"] == [["fiona", "hello"], ["declan", [116, 101, 115, 116]]]


def test_associative_query_and_execute(node: Node) -> None:
    node.execute(FOO, "INSERT INTO foo(name, age) VALUES('fiona', 20)")
    assert node.query("SELECT * FROM foo", "SELECT * FROM foo WHERE 0", "SELECT * FROM nope", associative=True) == [
        {"types": {"age": "integer", "id": "integer", "name": "text"}, "rows": [{"age": 20, "id": 1, "name": "fiona"}]},
        {"types": {"age": "integer", "id": "integer", "name": "text"}, "rows": []},
        {"rows": [], "error": "no such table: nope"},
    ]
    # rqlite.md §1.3 unified-endpoint example: writes gain "rows": null, errors stay bare.
    assert node.execute("INSERT INTO foo(name, age) VALUES('declan', 30)", "SELECT name FROM foo WHERE id = 2",
                        "SELECT * FROM bar", associative=True) == [
        {"last_insert_id": 2, "rows_affected": 1, "rows": None},
        {"types": {"name": "text"}, "rows": [{"name": "declan"}]},
        {"error": "no such table: bar"},
    ]  # fmt: skip


def test_returning_gives_rows(node: Node) -> None:
    node.execute(FOO)
    assert node.execute("INSERT INTO foo(name) VALUES('a'), ('b') RETURNING id, name") == [
        {"columns": ["id", "name"], "types": ["integer", "text"], "values": [[1, "a"], [2, "b"]]}
    ]


def test_time_columns_render_as_rfc3339(node: Node) -> None:
    # rqlite Test_DB_SQLiteTimeTypes, verbatim, plus integer/boolean/real conversions.
    node.execute("CREATE TABLE foo(d DATE, ts TIMESTAMP, dt DATETIME, ok BOOLEAN)",
                 "INSERT INTO foo(d, ts, dt) VALUES('2004-02-14', '2004-02-14 07:15:00', '2021-10-22 19:39:32.016087')",
                 "INSERT INTO foo(d, ts, dt, ok) VALUES(0, 1700000000123, 2.5, 1)",
                 "INSERT INTO foo(d, dt, ok) VALUES('not a date', '2021-10-22 19:39:32+02:00', 0)")  # fmt: skip
    assert node.query("SELECT d, ts, dt, ok FROM foo") == [
        {"columns": ["d", "ts", "dt", "ok"], "types": ["date", "timestamp", "datetime", "boolean"],
         "values": [["2004-02-14T00:00:00Z", "2004-02-14T07:15:00Z", "2021-10-22T19:39:32.016087Z", None],
                    ["1970-01-01T00:00:00Z", "2023-11-14T22:13:20.123Z", 2.5, True],
                    ["0001-01-01T00:00:00Z", None, "2021-10-22T19:39:32+02:00", False]]}
    ]  # fmt: skip


def test_sql_error_is_a_result_and_others_still_run(node: Node) -> None:
    node.execute(FOO)
    assert node.execute("INSERT INTO foo(id) VALUES(1)", "INSERT INTO foo(id) VALUES(1)", "SELECT * FROM bar",
                        "INSERT INTO foo(id) VALUES(2)") == [
        {"last_insert_id": 1, "rows_affected": 1},
        {"error": "UNIQUE constraint failed: foo.id"},
        {"error": "no such table: bar"},
        {"last_insert_id": 2, "rows_affected": 1},
    ]  # fmt: skip
    assert node.query("SELECT count(*) FROM foo")[0]["values"] == [[2]]


def test_transaction_failure_reports_up_to_the_error_and_undoes_all(node: Node) -> None:
    node.execute(FOO)
    results = node.execute("INSERT INTO foo(id) VALUES(1)", "INSERT INTO foo(id) VALUES(1)",
                           "INSERT INTO foo(id) VALUES(3)", tx=True)  # fmt: skip
    assert results == [{"last_insert_id": 1, "rows_affected": 1}, {"error": "UNIQUE constraint failed: foo.id"}]
    assert node.query("SELECT count(*) FROM foo")[0]["values"] == [[0]]


def test_empty_statements_are_skipped_and_last_of_a_script_wins(node: Node) -> None:
    assert node.execute("", FOO, "") == [{}]
    assert node.execute("INSERT INTO foo(name) VALUES('x'); SELECT name FROM foo") == [
        {"columns": ["name"], "types": ["text"], "values": [["x"]]}
    ]
    assert node.execute("-- only a comment") == [{}]


def test_statements_that_would_break_replication_are_refused(node: Node) -> None:
    results = node.execute("BEGIN", "PRAGMA recursive_triggers=ON", "PRAGMA wal_checkpoint", "CREATE TEMP TABLE t(x)",
                           "DELETE FROM _zraft_meta", "ATTACH 'x.db' AS x", "PRAGMA foreign_keys")  # fmt: skip
    assert [r.get("error", "") for r in results[:6]] == [
        "transaction control statements are not supported; use the transaction option",
        "disallowed pragma: zraft keeps recursive_triggers at OFF on every node",
        "disallowed pragma",
        "temporary tables, views, triggers and indexes are not supported",
        "table _zraft_meta is reserved",
        "ATTACH and DETACH are not supported",
    ]
    assert results[6] == {"columns": ["foreign_keys"], "types": ["integer"], "values": [[0]]}
    assert node.db.applied_index() == 1


def test_bad_parameters_are_statement_errors(node: Node) -> None:
    node.execute(FOO)
    results = node.execute(("INSERT INTO foo(name) VALUES(?)", []), ("INSERT INTO foo(name) VALUES(:n)", {}),
                           ("INSERT INTO foo(id) VALUES(?)", [2**63]))  # fmt: skip
    assert all(set(r) == {"error"} for r in results)
