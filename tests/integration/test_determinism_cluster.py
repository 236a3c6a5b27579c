"""A real 3-node cluster: nondeterministic SQL leaves every node with the same rows (with and
without ?norwrandom/?norwtime), the foreign-key pragma ORMs send works, and a never-ending
write is aborted identically on every node while the cluster keeps taking writes.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, http, query, wait_for

pytestmark = pytest.mark.integration

NONDETERMINISTIC = [
    "INSERT INTO t(v) VALUES(datetime(\"now\", 'subsec'))",
    "INSERT INTO t(v) VALUES(hex(randomblob(abs(random() % 16) + 1)))",
    "INSERT INTO t(v) SELECT value || ':' || random() FROM json_each('[1,2,3,4,5]') ORDER BY random()",
    ["INSERT INTO t(v) VALUES(strftime('%Y-%m-%d %H:%M:%f', ?))", "now"],
    "INSERT INTO t(v) VALUES(unixepoch('subsec') || ' ' || datetime('now', 'localtime'))",
    "INSERT INTO t(v) VALUES(NULL)",  # DEFAULTs and the trigger
]


def contents(cluster: LocalCluster, node_id: int) -> list[object]:
    out = []
    for sql in ("SELECT * FROM t ORDER BY id", "SELECT * FROM log ORDER BY id", "SELECT * FROM child"):
        status, body = query(cluster.port(node_id), sql, level="none")
        assert status == 200, body
        out.append(body["results"][0].get("values", []))
    return out


def test_nondeterministic_sql_and_a_never_ending_write_leave_every_node_identical(cluster: LocalCluster) -> None:
    status, body = execute(cluster.port(1), [
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v, at DEFAULT CURRENT_TIMESTAMP, r DEFAULT (random()))",
        "CREATE TABLE log(id INTEGER PRIMARY KEY, what, at, rnd)",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log(what, at, rnd)"
        " VALUES(new.id, julianday('now'), randomblob(4)); END"])
    assert status == 200 and all("error" not in r for r in body["results"]), body
    for params in ({}, {"norwrandom": "", "norwtime": ""}):
        for node_id in (1, 2, 3):  # through followers too (forwarded to the leader)
            status, body = execute(cluster.port(node_id), NONDETERMINISTIC, **params)
            assert status == 200 and all("error" not in r for r in body["results"]), body

    # what pyDAL, Django and peewee send on connect: accepted, and foreign keys are enforced
    status, body = execute(cluster.port(2), ["PRAGMA foreign_keys=ON", "PRAGMA legacy_alter_table=OFF"])
    assert status == 200 and all("error" not in r for r in body["results"]), body
    status, body = execute(cluster.port(3), ["CREATE TABLE child(p REFERENCES t(id))", "INSERT INTO child VALUES(-1)",
                                             "INSERT INTO child VALUES(1)", "PRAGMA max_page_count=1"])
    assert status == 200 and body["results"][1] == {"error": "FOREIGN KEY constraint failed"}, body
    assert "error" not in body["results"][2] and "max_page_count" in body["results"][3]["error"], body

    never = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
             " INSERT INTO t(v) SELECT x FROM c")
    started = time.monotonic()
    status, body = http("POST", f"http://127.0.0.1:{cluster.port(1)}/db/execute?timeout=120s", [never],
                        timeout=130)
    assert status == 200, body
    assert "exceeded the entry's budget" in body["results"][0]["error"], body
    assert time.monotonic() - started < 120

    # the cluster keeps taking writes, quickly
    for n in range(20):
        t0 = time.monotonic()
        status, body = execute(cluster.port(1 + n % 3), ["INSERT INTO t(v) VALUES('after')"])
        assert status == 200 and "error" not in body["results"][0], body
        assert time.monotonic() - t0 < 5

    total = 6 * 10 + 20  # 10 rows a request, 6 requests; none of the never-ending write
    wait_for(lambda: all(len(contents(cluster, i)[0]) == total for i in (1, 2, 3)), 30, "every node applied all")
    first, second, third = (contents(cluster, i) for i in (1, 2, 3))
    assert first == second == third
    assert len(first[1]) == total  # the trigger fired for each row, alike everywhere
