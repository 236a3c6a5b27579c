"""rqlite API features over HTTP against fake raft/store processes: statement rewriting,
read-only strong queries, /db/sql, /db/request, queued writes, backup/load, request-level
checks (disallowed PRAGMAs, negative durations, freshness) and /debug/vars."""

from __future__ import annotations

import re
import sqlite3
import zlib
from collections.abc import Iterator

import pytest

from tests.component.test_api_http import Env, start_env, stop_env
from zraft.api.statements import disallowed_pragma
from zraft.store.command import LoadChunk, LoadCommit
from zraft.wire.messages import Propose, Query

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def env() -> Iterator[Env]:
    e = start_env()
    yield e
    stop_env(e)


def make_db(env: Env, *sql: str) -> None:
    path = env.node.config.db_path
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    for s in sql:
        conn.execute(s)
    conn.commit()
    conn.close()


# == rewriting ================================================================================
def test_execute_rewrites_random_and_now_before_the_log(env: Env) -> None:
    status, _ = env.node.json("POST", "/db/execute", ["INSERT INTO t VALUES(random(), datetime('now'))"])
    assert status == 200
    [cmd] = env.proposals()
    sql = cmd.statements[0].sql
    assert "random" not in sql.lower() and "now" not in sql.lower()
    assert re.search(r"-?\d{6,}", sql)


def test_norwrandom_and_norwtime_keep_the_statement(env: Env) -> None:
    original = "INSERT INTO t VALUES(random(), datetime('now'))"
    env.node.json("POST", "/db/execute?norwrandom&norwtime", [original])
    env.node.json("POST", "/db/execute?norwrandom", [original])
    first, second = env.proposals()
    assert first.statements[0].sql == original
    assert "random()" in second.statements[0].sql and "'now'" not in second.statements[0].sql


def test_oversize_randomblob_is_400_and_nothing_is_proposed(env: Env) -> None:
    status, _, body = env.node.request("POST", "/db/execute", ["INSERT INTO t VALUES(randomblob(100000000))"])
    assert status == 400 and b"randomblob" in body.lower()
    assert env.raft_srv.received == []


def test_strong_query_is_a_rewritten_read_only_command(env: Env) -> None:
    status, _ = env.node.json("POST", "/db/query?level=strong", ["SELECT random()"])
    assert status == 200
    [cmd] = env.proposals()
    assert cmd.read_only and "random" not in cmd.statements[0].sql.lower()
    env.node.json("POST", "/db/execute", ["INSERT INTO t VALUES(1)"])
    assert not env.proposals()[1].read_only


def test_weak_query_is_not_rewritten(env: Env) -> None:
    status, doc = env.node.json("GET", "/db/query?q=SELECT+random()")
    assert status == 200 and doc["results"][0]["values"][0][0] == "SELECT random()"


def test_db_sql_shows_rewrites_and_touches_nothing(env: Env) -> None:
    status, doc = env.node.json("GET", "/db/sql?q=SELECT+random()&norwtime")
    assert status == 200
    [res] = doc["results"]
    assert res["original"] == "SELECT random()" and "random" not in res["rewritten"].lower()
    status, doc = env.node.json("POST", "/db/sql?timings", ["SELECT date('now')", "SELEC x"])
    assert status == 200 and "time" in doc
    assert "rewritten" in doc["results"][0] and "error" in doc["results"][1]
    assert env.raft_srv.received == [] and env.store_srv.received == []


# == request-level checks =====================================================================
@pytest.mark.parametrize("sql", ["PRAGMA journal_mode=DELETE", "pragma main.synchronous = OFF",
                                 "PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA query_only=1",
                                 "SELECT 1; PRAGMA wal_autocheckpoint=0"])
def test_disallowed_pragmas_are_refused_like_rqlite(env: Env, sql: str) -> None:
    for path in ("/db/execute", "/db/query", "/db/request"):
        status, doc = env.node.json("POST", path, [sql])
        assert (status, doc) == (200, {"results": [], "error": "disallowed pragma"}), path
    assert env.raft_srv.received == [] and env.store_srv.received == []


def test_read_only_pragmas_are_allowed() -> None:
    assert not disallowed_pragma("PRAGMA journal_mode")
    assert not disallowed_pragma("PRAGMA foreign_keys")
    assert not disallowed_pragma("PRAGMA table_info(t)")


@pytest.mark.parametrize("param", ["timeout=-1s", "db_timeout=-5ms", "freshness=-1s"])
def test_negative_durations_are_400(env: Env, param: str) -> None:
    status, _, body = env.node.request("GET", f"/db/query?q=SELECT+1&{param}")
    assert status == 400 and body.endswith(b"must not be negative\n")


def test_unknown_level_is_400(env: Env) -> None:
    status, _, body = env.node.request("POST", "/db/request?level=eventual", ["SELECT 1"])
    assert status == 400 and b"invalid level" in body


def test_non_json_and_empty_bodies_on_request_endpoint(env: Env) -> None:
    assert env.node.request("POST", "/db/request", b"SELECT 1")[0::2] == (400, b"invalid JSON body\n")
    assert env.node.request("POST", "/db/request", b"[]")[0::2] == (400, b"no statements\n")
    assert env.node.request("GET", "/db/request")[0] == 405


def test_stale_read_with_freshness_on_a_node_without_leader_contact() -> None:
    e = start_env(leader=2)
    try:
        status, doc = e.node.json("GET", "/db/query?q=SELECT+1&level=none&freshness=1ns")
        assert (status, doc) == (200, {"results": [], "error": "stale read"})
        status, doc = e.node.json("GET", "/db/query?q=SELECT+1&level=none")
        assert status == 200 and "values" in doc["results"][0]
    finally:
        stop_env(e)


# == /db/request ==============================================================================
def test_request_with_a_write_goes_through_the_log(env: Env) -> None:
    make_db(env, "CREATE TABLE t(a)")
    status, doc = env.node.json("POST", "/db/request?raft_index", ["INSERT INTO t VALUES(1)", "SELECT * FROM t"])
    assert status == 200 and doc["raft_index"] == 1
    [cmd] = env.proposals()
    assert [s.sql for s in cmd.statements] == ["INSERT INTO t VALUES(1)", "SELECT * FROM t"]
    assert not cmd.read_only


def test_request_with_only_reads_is_a_query_at_the_level(env: Env) -> None:
    make_db(env, "CREATE TABLE t(a)")
    status, doc = env.node.json("POST", "/db/request?level=none", ["SELECT * FROM t", "EXPLAIN DELETE FROM t"])
    assert status == 200 and len(doc["results"]) == 2
    assert env.raft_srv.of(Propose) == [] and len(env.store_srv.of(Query)) == 1


def test_request_that_does_not_compile_counts_as_a_write(env: Env) -> None:
    make_db(env, "CREATE TABLE t(a)")
    env.node.json("POST", "/db/request", ["SELECT * FROM missing"])
    assert len(env.proposals()) == 1


def test_request_strong_goes_through_the_log_read_only(env: Env) -> None:
    make_db(env, "CREATE TABLE t(a)")
    env.node.json("POST", "/db/request?level=strong", ["SELECT * FROM t"])
    [cmd] = env.proposals()
    assert cmd.read_only is False  # rqlite's EXECUTE_QUERY: a request may mix both


# == queued writes ============================================================================
def test_queued_writes_return_sequence_numbers_and_are_batched(env: Env) -> None:
    seqs = []
    for i in range(5):
        status, doc = env.node.json("POST", "/db/execute?queue", [f"INSERT INTO t VALUES({i})"])
        assert status == 200 and doc["results"] == []
        seqs.append(doc["sequence_number"])
    assert seqs == sorted(seqs) and len(set(seqs)) == 5 and seqs[0] > 10**18
    status, doc = env.node.json("POST", "/db/execute?queue&wait", [])
    assert status == 200 and doc["sequence_number"] == seqs[-1] + 1
    statements = [s.sql for cmd in env.proposals() for s in cmd.statements]
    assert statements == [f"INSERT INTO t VALUES({i})" for i in range(5)]
    assert len(env.proposals()) <= 2


def test_queued_write_with_wait_returns_after_it_is_applied(env: Env) -> None:
    status, doc = env.node.json("POST", "/db/execute?queue&wait&timeout=5s", ["INSERT INTO t VALUES(random())"])
    assert status == 200
    [cmd] = env.proposals()
    assert "random" not in cmd.statements[0].sql.lower()


def test_queued_write_without_leader_is_503() -> None:
    e = start_env(leader=0)
    try:
        status, _, body = e.node.request("POST", "/db/execute?queue", ["INSERT INTO t VALUES(1)"])
        assert (status, body) == (503, b"leader not found\n")
        assert e.node.json("POST", "/db/execute?queue&noleader", ["INSERT INTO t VALUES(1)"])[0] == 200
    finally:
        stop_env(e)


def test_queued_empty_body_without_wait_is_400(env: Env) -> None:
    assert env.node.request("POST", "/db/execute?queue", b"[]")[0::2] == (400, b"no statements\n")


def test_queue_wait_timeout_is_408(env: Env) -> None:
    env.raft.leader = 0  # flushes cannot succeed
    env.node.json("POST", "/db/execute?queue&noleader", ["INSERT INTO t VALUES(1)"])
    status, _, body = env.node.request("POST", "/db/execute?queue&noleader&wait&timeout=200ms", b"[]")
    assert (status, body) == (408, b"queue wait timeout\n")


# == backup and load ==========================================================================
def test_backup_binary_and_sql_without_zraft_meta(env: Env) -> None:
    make_db(env, "CREATE TABLE _zraft_meta(key TEXT PRIMARY KEY, value)", "CREATE TABLE foo(id INTEGER PRIMARY KEY, name TEXT)",
            "INSERT INTO foo(name) VALUES('fiona')")
    status, headers, data = env.node.request("GET", "/db/backup")
    assert status == 200 and data.startswith(b"SQLite format 3\x00")
    assert headers["content-type"].startswith("application/octet-stream")
    status, headers, text = env.node.request("GET", "/db/backup?fmt=sql")
    assert status == 200 and headers["content-type"].startswith("application/sql")
    assert text.decode().splitlines()[:3] == ["PRAGMA foreign_keys=OFF;", "BEGIN TRANSACTION;",
                                              "CREATE TABLE foo(id INTEGER PRIMARY KEY, name TEXT);"]
    assert b"_zraft_meta" not in text and b"INSERT INTO \"foo\" VALUES(1,'fiona');" in text
    assert env.node.request("GET", "/db/backup?fmt=zip")[2] == data  # rqlite: unknown format is binary
    assert env.node.request("GET", "/db/backup?fmt=sql&vacuum")[0] == 400


def test_load_sql_dump_goes_through_the_log_as_one_transaction(env: Env) -> None:
    dump = b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCREATE TABLE x(a);\nINSERT INTO x VALUES('a;b');\nCOMMIT;\n"
    status, doc = env.node.json("POST", "/db/load", dump, headers={"Content-Type": "text/plain"})
    assert status == 200 and len(doc["results"]) == 1
    [cmd] = env.proposals()
    assert cmd.transaction
    assert [s.sql for s in cmd.statements] == ["CREATE TABLE x(a);\nINSERT INTO x VALUES('a;b');"]


def test_load_sqlite_file_replaces_the_database_through_the_log(env: Env) -> None:
    make_db(env, "CREATE TABLE old(a)")
    src = env.node.config.data_dir / "upload.sqlite"
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE new(a)")
    conn.execute("INSERT INTO new VALUES(7)")
    conn.commit()
    conn.close()
    status, doc = env.node.json("POST", "/db/load", src.read_bytes(),
                                headers={"Content-Type": "application/octet-stream"})
    assert (status, doc) == (200, {"results": []})
    *chunks, commit = env.proposals()  # the file in chunks, then the commit
    data = src.read_bytes()
    assert all(isinstance(c, LoadChunk) for c in chunks) and b"".join(c.data for c in chunks) == data
    assert commit == LoadCommit(chunks[0].load_id, len(chunks), len(data), zlib.crc32(data))


def test_a_damaged_sqlite_file_is_a_400_and_nothing_enters_the_log(env: Env) -> None:
    src = env.node.config.data_dir / "upload.sqlite"
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE new(a)")
    conn.executemany("INSERT INTO new VALUES(?)", [(i,) for i in range(5000)])
    conn.commit()
    conn.close()
    before = len(env.proposals())
    status, _, body = env.node.request("POST", "/db/load", src.read_bytes()[:6000])
    assert status == 400 and body.startswith(b"invalid SQLite data")
    assert len(env.proposals()) == before


# == diagnostics ==============================================================================
def test_debug_vars_is_json_with_queue_counters(env: Env) -> None:
    status, doc = env.node.json("GET", "/debug/vars")
    assert status == 200 and {"http", "queue", "cmdline"} <= doc.keys()
    status, doc = env.node.json("GET", "/debug/vars?key=queue")
    assert status == 200 and "sequence_number" in doc


def test_readyz_sync_and_noleader(env: Env) -> None:
    status, _, body = env.node.request("GET", "/readyz?sync&timeout=2s")
    assert status == 200 and body.endswith(b"[+]sync ok\n")
    status, _, body = env.node.request("GET", "/readyz?noleader")
    assert (status, body) == (200, b"[+]node ok\n")


def test_leader_and_nodes_variants(env: Env) -> None:
    status, doc = env.node.json("GET", "/leader")
    assert status == 200 and doc["id"] == "1" and doc["leader"] is True
    status, doc = env.node.json("GET", "/nodes?ver=2&nonvoters")
    assert status == 200 and [n["id"] for n in doc["nodes"]] == ["1", "2", "3"]


def test_backup_on_a_follower_redirects_or_serves_a_synced_copy() -> None:
    e = start_env(leader=2)
    try:
        make_db(e, "CREATE TABLE foo(a)")
        status, headers, _ = e.node.request("GET", "/db/backup?redirect")
        assert status == 301 and headers["location"] == f"http://{e.cluster.peer(2).http}/db/backup?redirect"
        status, _, data = e.node.request("GET", "/db/backup?fmt=sql")
        assert status == 200 and b"CREATE TABLE foo(a);" in data
    finally:
        stop_env(e)
