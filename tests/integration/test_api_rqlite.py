"""rqlite API behaviour on a real 3-node cluster: rewritten statements give identical values
on every node, queued writes and loads reach every node, no leader is a 503, ?redirect a 301."""

from __future__ import annotations

import http.client as httpclient
import os
import signal

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, http, wait_for

pytestmark = pytest.mark.integration


def leader(cluster: LocalCluster) -> int:
    return wait_for(cluster.leader_id, 20, "a leader")


def local_rows(cluster: LocalCluster, node_id: int, sql: str) -> list[list[object]]:
    status, doc = http("POST", f"http://127.0.0.1:{cluster.port(node_id)}/db/query?level=none", [sql])
    assert status == 200, doc
    return list(doc["results"][0].get("values", []))


def test_random_and_time_values_are_identical_on_all_nodes(cluster: LocalCluster) -> None:
    lead = leader(cluster)
    follower = next(i for i in (1, 2, 3) if i != lead)
    status, doc = execute(cluster.port(follower), [
        "CREATE TABLE r(a INTEGER, b BLOB, t TEXT, j REAL)",
        "INSERT INTO r VALUES(random(), randomblob(16), datetime('now', 'subsec'), julianday('now'))",
    ])
    assert status == 200 and "error" not in str(doc), doc
    # a queued write is rewritten too
    status, doc = http("POST", f"http://127.0.0.1:{cluster.port(lead)}/db/execute?queue&wait&timeout=10s",
                       ["INSERT INTO r VALUES(random(), NULL, CURRENT_TIMESTAMP, 0)"])
    assert status == 200, doc
    sql = "SELECT a, hex(b), t, j FROM r ORDER BY rowid"
    def both_rows() -> list[list[object]] | None:
        rows = local_rows(cluster, lead, sql)
        return rows if len(rows) == 2 else None
    expected = wait_for(both_rows, 10, "both rows on the leader")
    assert expected[0][0] != expected[1][0] and expected[0][1] and len(str(expected[0][1])) == 32
    for node in (1, 2, 3):
        wait_for(lambda n=node: local_rows(cluster, n, sql) == expected, 10, f"node {node} identical")  # type: ignore[misc]


def test_strong_query_cannot_write(cluster: LocalCluster) -> None:
    lead = leader(cluster)
    port = cluster.port(lead)
    assert execute(port, ["CREATE TABLE w(a)"])[0] == 200
    status, doc = http("POST", f"http://127.0.0.1:{port}/db/query?level=strong", ["INSERT INTO w VALUES(1)"])
    assert status == 200
    assert doc["results"][0]["error"] == "attempt to change database via query operation"
    for node in (1, 2, 3):
        assert local_rows(cluster, node, "SELECT count(*) FROM w") in ([[0]], [])


def test_load_reaches_every_node_and_backup_hides_zraft_meta(cluster: LocalCluster) -> None:
    lead = leader(cluster)
    dump = b"BEGIN TRANSACTION;\nCREATE TABLE l(a);\nINSERT INTO l VALUES(1);\nCOMMIT;\n"
    status, doc = http("POST", f"http://127.0.0.1:{cluster.port(lead)}/db/load", raw=dump)
    assert status == 200, doc
    for node in (1, 2, 3):
        wait_for(lambda n=node: local_rows(cluster, n, "SELECT a FROM l") == [[1]], 10, f"load on {node}")  # type: ignore[misc]
    status, text = http("GET", f"http://127.0.0.1:{cluster.port(lead)}/db/backup?fmt=sql")
    assert status == 200 and "CREATE TABLE l(a);" in text and "_zraft_meta" not in text
    assert local_rows(cluster, lead, "SELECT name FROM sqlite_master") == [["l"]]


def test_redirect_is_301_to_the_leader(cluster: LocalCluster) -> None:
    lead = leader(cluster)
    follower = next(i for i in (1, 2, 3) if i != lead)
    conn = httpclient.HTTPConnection("127.0.0.1", cluster.port(follower), timeout=10)
    try:
        conn.request("POST", "/db/execute?redirect", body=b'["CREATE TABLE x(a)"]',
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 301
        assert resp.getheader("Location") == f"http://127.0.0.1:{cluster.port(lead)}/db/execute?redirect"
    finally:
        conn.close()


def test_no_leader_is_503(cluster: LocalCluster) -> None:
    lead = leader(cluster)
    survivor = next(i for i in (1, 2, 3) if i != lead)
    stopped = [cluster.pid(i, "raft") for i in (1, 2, 3) if i != survivor]
    assert all(stopped)
    try:
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]

        def refused() -> bool:
            status, body = http("POST", f"http://127.0.0.1:{cluster.port(survivor)}/db/execute",
                                ["CREATE TABLE nl(a)"], timeout=15)
            return status == 503 and "leader not found" in str(body)
        wait_for(refused, 30, "503 leader not found", interval=0.5)
        status, body = http("GET", f"http://127.0.0.1:{cluster.port(survivor)}/leader")
        assert status == 503
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
    leader(cluster)
