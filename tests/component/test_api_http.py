"""The API process over HTTP against fake raft/store/leader servers on real ZeroMQ sockets:
rqlite's response shapes, status codes and error bodies, request flows per consistency
level, forwarding, limits and bad input."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.component.test_api_support import (
    ApiNode,
    Cluster,
    FakePublisher,
    FakeRaft,
    FakeServer,
    FakeStore,
    leader_endpoint,
    make_cluster,
    remove_cluster,
)
from zraft.store.command import Statement, decode_command
from zraft.wire.messages import (
    ClientExecute,
    ClientOptions,
    ClientQuery,
    Error,
    ErrorCode,
    Propose,
    Query,
    QueryOptions,
    ReadIndex,
    StatusRequest,
    WaitApplied,
)

pytestmark = pytest.mark.timeout(30)


@dataclass
class Env:
    cluster: Cluster
    raft: FakeRaft
    store: FakeStore
    raft_srv: FakeServer
    store_srv: FakeServer
    node: ApiNode

    def proposals(self) -> list[Any]:
        return [decode_command(data) for data in self.raft.log.values()]


def start_env(leader: int = 1, **api: int) -> Env:
    cluster = make_cluster()
    config = cluster.config(1, **api)
    raft = FakeRaft(1, leader)
    store = FakeStore(raft)
    raft_srv = FakeServer(config.raft_rpc, raft.handle)
    store_srv = FakeServer(config.store_rpc, store.handle)
    node = ApiNode(config)
    return Env(cluster, raft, store, raft_srv, store_srv, node)


def stop_env(env: Env) -> None:
    env.node.stop()
    env.raft_srv.stop()
    env.store_srv.stop()
    remove_cluster(env.cluster)


@pytest.fixture
def env() -> Iterator[Env]:
    e = start_env()
    yield e
    stop_env(e)


@pytest.fixture
def follower() -> Iterator[tuple[Env, FakeServer]]:
    """Node 1 is a follower; node 2's native endpoint is a fake leader."""
    e = start_env(leader=2)
    leader = FakeServer(e.cluster.peer(2).api_zmq, leader_endpoint(2))
    yield e, leader
    leader.stop()
    stop_env(e)


# == writes ===================================================================================
def test_execute_returns_the_store_results_in_rqlite_shape(env: Env) -> None:
    status, headers, body = env.node.request(
        "POST", "/db/execute", ["CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)",
                                "INSERT INTO foo(name) VALUES('fiona')"],
        headers={"Content-Type": "application/json"})
    assert status == 200
    assert body == b'{"results":[{},{"last_insert_id":1,"rows_affected":1}]}'
    assert headers["content-type"].startswith("application/json")
    assert headers["x-rqlite-served-by"] == env.cluster.peer(1).http
    assert "x-rqlite-version" in headers
    [cmd] = env.proposals()
    assert cmd.statements[1] == Statement("INSERT INTO foo(name) VALUES('fiona')")
    assert not cmd.transaction
    [wait] = env.store_srv.of(WaitApplied)
    assert (wait.index, wait.term) == (1, 3)


def test_parameterized_statements_in_both_rqlite_forms(env: Env) -> None:
    status, doc = env.node.json("POST", "/db/execute", [
        ["INSERT INTO foo(name, age) VALUES(?, ?)", "fiona", 20],
        ["INSERT INTO foo(name, age) VALUES(:name, :age)", {"name": "fiona", "age": 20}],
        ["INSERT INTO foo(data) VALUES(?)", [83, 81, 76]],
        ["INSERT INTO foo(data, f, n, b) VALUES(?, ?, ?, ?)", "x'0aff'", 1.5, None, True],
        ["SELECT 1"],
    ])
    assert status == 200
    assert len(doc["results"]) == 5
    stmts = env.proposals()[0].statements
    assert stmts[0] == Statement("INSERT INTO foo(name, age) VALUES(?, ?)", ["fiona", 20])
    assert stmts[1] == Statement("INSERT INTO foo(name, age) VALUES(:name, :age)", {"name": "fiona", "age": 20})
    assert stmts[2].params == [b"SQL"]
    assert stmts[3].params == [b"\x0a\xff", 1.5, None, True]
    assert stmts[4] == Statement("SELECT 1", None)


def test_transaction_timings_raft_index_and_pretty(env: Env) -> None:
    status, _, body = env.node.request(
        "POST", "/db/execute?transaction&timings&raft_index&pretty",
        ["INSERT INTO foo VALUES(1)", "INSERT INTO foo VALUES(2)"])
    assert status == 200
    assert body.startswith(b'{\n    "results": [\n')
    import json
    doc = json.loads(body)
    assert env.proposals()[0].transaction is True
    assert isinstance(doc["time"], float)
    assert all(isinstance(r["time"], float) for r in doc["results"])
    assert doc["raft_index"] == 1
    assert list(doc) == ["results", "time", "raft_index"]


def test_text_plain_body_is_one_statement(env: Env) -> None:
    status, _ = env.node.json("POST", "/db/execute", "INSERT INTO foo VALUES('a, b; c')",
                              headers={"Content-Type": "text/plain"})
    assert status == 200
    assert env.proposals()[0].statements == [Statement("INSERT INTO foo VALUES('a, b; c')")]


def test_write_on_a_follower_is_forwarded_to_the_leader(follower: tuple[Env, FakeServer]) -> None:
    env, leader = follower
    status, headers, body = env.node.request("POST", "/db/execute?raft_index&associative",
                                             [["INSERT INTO foo VALUES(?)", [1, 2]]])
    assert status == 200
    assert body == b'{"results":[{"last_insert_id":99,"rows_affected":1}],"raft_index":42}'
    assert headers["x-rqlite-served-by"] == env.cluster.peer(2).http
    [msg] = leader.of(ClientExecute)
    assert msg.statements == [Statement("INSERT INTO foo VALUES(?)", [b"\x01\x02"])]
    assert msg.options == ClientOptions(associative=True, forwarded=True)
    assert env.raft.log == {}


def test_redirect_answers_301_to_the_leader(follower: tuple[Env, FakeServer]) -> None:
    env, leader = follower
    status, headers, _ = env.node.request("POST", "/db/execute?redirect", ["INSERT INTO foo VALUES(1)"])
    assert status == 301
    assert headers["location"] == f"http://{env.cluster.peer(2).http}/db/execute?redirect"
    assert leader.received == []


def test_no_leader_is_503_leader_not_found() -> None:
    env = start_env(leader=0)
    try:
        for method, path, body in (("POST", "/db/execute", ["INSERT INTO foo VALUES(1)"]),
                                   ("GET", "/db/query?q=SELECT+1", None),
                                   ("GET", "/db/query?q=SELECT+1&level=linearizable", None),
                                   ("GET", "/db/query?q=SELECT+1&level=strong", None)):
            status, _, data = env.node.request(method, path, body)
            assert (status, data) == (503, b"leader not found\n"), path
        status, _, data = env.node.request("GET", "/db/query?q=SELECT+1&level=none")
        assert status == 200
    finally:
        stop_env(env)


def test_store_timeout_and_leadership_lost_are_rqlite_request_errors(env: Env) -> None:
    env.store.delay = 2.0
    start = time.monotonic()
    status, doc = env.node.json("POST", "/db/execute?timeout=300ms", ["INSERT INTO foo VALUES(1)"])
    assert time.monotonic() - start < 1.5
    assert status == 200
    assert doc["results"] == [] and "within" in doc["error"]
    env.store.delay = 0.0
    env.store.wait_error = Error(id=0, code=ErrorCode.LEADERSHIP_LOST,
                                 message="entry 2 was replaced by one from term 4")
    status, doc = env.node.json("POST", "/db/execute", ["INSERT INTO foo VALUES(1)"])
    assert (status, doc) == (200, {"results": [], "error": "entry 2 was replaced by one from term 4"})


def test_raft_unavailable_is_503(env: Env) -> None:
    env.raft.propose_error = Error(id=0, code=ErrorCode.UNAVAILABLE, message="raft is restarting")
    status, _, body = env.node.request("POST", "/db/execute", ["INSERT INTO foo VALUES(1)"])
    assert (status, body) == (503, b"raft is restarting\n")


def test_disk_full_is_503_in_rqlites_error_shape_and_not_applied_is_200(env: Env) -> None:
    """Refused before the log (safe to retry): 503; in the log but not applicable here
    (outcome unknown, like a timeout): 200; both carry rqlite's JSON error."""
    env.raft.propose_error = Error(id=0, code=ErrorCode.DISK_FULL, message="disk full: /data/raft: No space left")
    status, doc = env.node.json("POST", "/db/execute", ["INSERT INTO foo VALUES(1)"])
    assert (status, doc) == (503, {"results": [], "error": "disk full: /data/raft: No space left"})
    env.raft.propose_error = None
    env.store.wait_error = Error(id=0, code=ErrorCode.NOT_APPLIED,
                                 message="disk full: /data/db.sqlite: outcome unknown")
    status, doc = env.node.json("POST", "/db/execute", ["INSERT INTO foo VALUES(1)"])
    assert (status, doc) == (200, {"results": [], "error": "disk full: /data/db.sqlite: outcome unknown"})


# == reads ====================================================================================
def test_query_none_reads_the_local_store_without_raft(env: Env) -> None:
    status, doc = env.node.json("GET", "/db/query?level=none&q=SELECT%20*%20FROM%20foo")
    assert status == 200
    assert doc == {"results": [{"columns": ["sql", "params"], "types": ["text", "text"],
                                "values": [["SELECT * FROM foo", "null"]]}]}
    [query] = env.store_srv.of(Query)
    assert query.min_applied == 0 and query.statements == [Statement("SELECT * FROM foo")]
    assert env.raft_srv.received == []


def test_query_weak_on_the_leader_asks_raft_then_reads_locally(env: Env) -> None:
    status, _ = env.node.json("POST", "/db/query?associative&blob_array",
                              [["SELECT * FROM foo WHERE id=?", 1]])
    assert status == 200
    assert len(env.raft_srv.of(StatusRequest)) == 1
    [query] = env.store_srv.of(Query)
    assert query.statements == [Statement("SELECT * FROM foo WHERE id=?", [1])]
    assert query.options == QueryOptions(associative=True, blob_array=True)


def test_query_weak_uses_the_commit_notice_stream() -> None:
    env = start_env()
    publisher = FakePublisher(env.node.config.raft_pub, leader=1)
    try:
        service = env.node.process.service  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while service.leader_cache.fresh() != 1:
            assert time.monotonic() < deadline, "no commit notice arrived"
            time.sleep(0.01)
        for _ in range(3):
            assert env.node.json("GET", "/db/query?q=SELECT+1")[0] == 200
        assert env.raft_srv.of(StatusRequest) == []
        assert len(env.store_srv.of(Query)) == 3
    finally:
        publisher.stop()
        stop_env(env)


def test_query_weak_on_a_follower_is_forwarded(follower: tuple[Env, FakeServer]) -> None:
    env, leader = follower
    status, headers, body = env.node.request("GET", "/db/query?q=SELECT+1&level=WEAK")
    assert status == 200
    assert body == b'{"results":[{"columns":["level"],"types":["text"],"values":[["weak"]]}]}'
    assert headers["x-rqlite-served-by"] == env.cluster.peer(2).http
    [msg] = leader.of(ClientQuery)
    assert msg.statements == [Statement("SELECT 1")] and msg.options == ClientOptions(forwarded=True)
    assert env.store_srv.received == []


def test_query_linearizable_reads_at_the_read_index(env: Env) -> None:
    env.raft.read_index = 17
    status, doc = env.node.json("GET", "/db/query?q=SELECT+1&level=linearizable")
    assert status == 200 and len(doc["results"]) == 1
    assert len(env.raft_srv.of(ReadIndex)) == 1
    [query] = env.store_srv.of(Query)
    assert query.min_applied == 17


def test_query_linearizable_on_a_follower_without_follower_reads_is_forwarded(
        follower: tuple[Env, FakeServer]) -> None:
    env, leader = follower
    status, doc = env.node.json("GET", "/db/query?q=SELECT+1&level=linearizable")
    assert (status, doc["results"][0]["values"]) == (200, [["linearizable"]])


def test_query_strong_goes_through_the_log(env: Env) -> None:
    status, doc = env.node.json("POST", "/db/query?level=strong&raft_index", ["SELECT * FROM foo"])
    assert status == 200
    assert doc["raft_index"] == 1
    assert doc["results"][0]["values"] == [["SELECT * FROM foo", "null"]]
    assert len(env.raft_srv.of(Propose)) == 1 and len(env.store_srv.of(WaitApplied)) == 1
    assert env.store_srv.of(Query) == []


def test_query_strong_on_a_follower_is_forwarded(follower: tuple[Env, FakeServer]) -> None:
    env, leader = follower
    status, doc = env.node.json("GET", "/db/query?q=SELECT+1&level=strong")
    assert (status, doc["results"][0]["values"]) == (200, [["strong"]])
    assert leader.of(ClientQuery)[0].level == "strong"


# == bad input ================================================================================
@pytest.mark.parametrize("body, message", [
    (b"[not json", b"invalid JSON body\n"),
    (b"", b"invalid JSON body\n"),
    (b'{"sql": "SELECT 1"}', b"invalid request\n"),
    (b'"SELECT 1"', b"invalid request\n"),
    (b"[]", b"no statements\n"),
    (b"[1]", b"invalid request\n"),
    (b"[[]]", b"invalid request\n"),
    (b"[[1, 2]]", b"invalid request\n"),
    (b'[null]', b"invalid request\n"),
    (b'[["INSERT INTO t VALUES(?)", [1, 300]]]', b"unsupported type: list\n"),
    (b'[["INSERT INTO t VALUES(?)", {"a": {"b": 1}}]]', b"unsupported type: dict\n"),
])
def test_bad_bodies_are_400_and_change_nothing(env: Env, body: bytes, message: bytes) -> None:
    for path in ("/db/execute", "/db/query"):
        status, headers, data = env.node.request("POST", path, body)
        assert (status, data) == (400, message), path
        assert headers["content-type"].startswith("text/plain")
    assert env.raft_srv.received == [] and env.store_srv.received == []


@pytest.mark.parametrize("path, message", [
    ("/db/query?q=SELECT+1&level=bogus", b"invalid level 'bogus': use none, weak, linearizable or strong\n"),
    ("/db/query?q=SELECT+1&timeout=soon", b"timeout is not a valid duration\n"),
    ("/db/query?q=SELECT+1&retries=x", b"retries is not a valid integer\n"),
    ("/db/query?q=SELECT+1&freshness_strict", b"freshness_strict requires freshness\n"),
    ("/db/query?q=", b"query parameter not set\n"),
])
def test_bad_parameters_are_400(env: Env, path: str, message: bytes) -> None:
    status, _, data = env.node.request("GET", path)
    assert (status, data) == (400, message)
    assert env.store_srv.received == []


def test_unknown_path_404_and_wrong_method_405(env: Env) -> None:
    assert env.node.request("GET", "/db/nothing")[0::2] == (404, b"")
    assert env.node.request("GET", "/")[0::2] == (404, b"")
    assert env.node.request("GET", "/db/execute")[0::2] == (405, b"")
    assert env.node.request("DELETE", "/db/query")[0::2] == (405, b"")
    assert env.node.request("POST", "/status")[0::2] == (405, b"")
    assert env.node.request("OPTIONS", "/db/execute")[0] == 200


def test_huge_content_length_is_413_without_reading_the_body() -> None:
    env = start_env(max_body_bytes=1024)
    try:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", env.node.port), timeout=5) as sock:
            sock.sendall(b"POST /db/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000000000\r\n\r\n[\"SELECT 1\"]")
            reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 413 "), reply
        assert time.monotonic() - start < 2
        # A body without Content-Length (chunked) is capped while it is read.
        status, _, _ = env.node.request("POST", "/db/execute", iter([b"[" + b" " * 2000 + b"]"]),
                                        headers={"Transfer-Encoding": "chunked"})
        assert status == 413
        status, _, _ = env.node.request("POST", "/db/query", b"[" + b" " * 2000 + b"]")
        assert status == 413
        assert env.raft_srv.received == [] and env.store_srv.received == []
    finally:
        stop_env(env)


def test_requests_beyond_max_in_flight_get_503() -> None:
    env = start_env(max_in_flight=1)
    env.store.delay = 1.0
    try:
        results: list[int] = []
        slow = threading.Thread(target=lambda: results.append(
            env.node.request("GET", "/db/query?q=SELECT+1&level=none")[0]))
        slow.start()
        deadline = time.monotonic() + 5
        while not env.store_srv.of(Query):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, _, body = env.node.request("GET", "/db/query?q=SELECT+2&level=none")
        assert (status, body) == (503, b"too many requests in flight\n")
        slow.join(5)
        assert results == [200]
    finally:
        stop_env(env)


# == node endpoints ===========================================================================
def test_status_has_rqlite_store_and_raft_sections(env: Env) -> None:
    env.node.json("POST", "/db/execute", ["INSERT INTO foo VALUES(1)"])
    status, doc = env.node.json("GET", "/status?pretty")
    assert status == 200
    store = doc["store"]
    assert store["node_id"] == "1" and store["leader"] == {"node_id": "1", "addr": "127.0.0.1:7001"}
    assert store["raft"]["state"] == "Leader"
    assert (store["raft"]["term"], store["raft"]["commit_index"], store["raft"]["applied_index"]) == (3, 1, 1)
    assert store["fsm_index"] == 1 and store["open"] is True and store["ready"] is True
    assert doc["http"]["bind_addr"] == env.cluster.peer(1).http
    assert doc["node"]["id"] == "1" and "pid" in doc["os"]
    assert env.node.json("GET", "/status?key=store.raft.state")[1] == "Leader"
    assert store["raft"]["disk_full"] == "" and store["fsm"]["disk_full"] == ""  # README: "When a disk fills"
    # rqlite's log fields, and the entries the log holds now (nothing compacted in the fake)
    assert (store["raft"]["last_snapshot_index"], store["raft"]["last_snapshot_term"]) == (0, 0)
    assert store["raft"]["log_entries"] == store["raft"]["last_log_index"] > 0 and "log_size" in store["raft"]


def test_status_shows_the_one_applied_index_the_stores(env: Env) -> None:
    env.node.json("POST", "/db/execute", ["INSERT INTO foo VALUES(1)"])
    env.store.applied = 0  # the raft process has committed entry 1; the store has not applied it
    store = env.node.json("GET", "/status")[1]["store"]
    assert store["raft"]["commit_index"] == 1
    assert (store["raft"]["applied_index"], store["raft"]["applied"], store["fsm_index"],
            store["db_applied_index"], store["fsm"]["applied"]) == (0, 0, 0, 0, 0)
    env.store.applied = 1
    store = env.node.json("GET", "/status")[1]["store"]
    assert (store["raft"]["applied_index"], store["raft"]["applied"], store["fsm_index"],
            store["db_applied_index"], store["fsm"]["applied"]) == (1, 1, 1, 1, 1)
    env.store_srv.stop()  # an unreachable store: the raft section stays, the fsm says why
    store = env.node.json("GET", "/status")[1]["store"]
    assert store["open"] is False and "error" in store["fsm"] and "fsm_index" not in store
    assert store["raft"]["state"] == "Leader" and store["raft"]["applied_index"] == 0


def test_nodes_reports_every_peer_with_reachability(follower: tuple[Env, FakeServer]) -> None:
    env, _ = follower
    status, doc = env.node.json("GET", "/nodes?timeout=300ms")
    assert status == 200
    assert sorted(doc) == ["1", "2", "3"]
    assert doc["1"]["reachable"] is True and doc["1"]["leader"] is False
    assert doc["2"]["reachable"] is True and doc["2"]["leader"] is True
    assert doc["2"]["api_addr"] == f"http://{env.cluster.peer(2).http}" and doc["2"]["addr"] == "127.0.0.1:7002"
    assert doc["3"]["reachable"] is False and doc["3"]["voter"] is True
    status, doc = env.node.json("GET", "/nodes?ver=2&timeout=300ms")
    assert [n["id"] for n in doc["nodes"]] == ["1", "2", "3"]
    status, doc = env.node.json("GET", "/leader?timeout=300ms")
    assert doc["id"] == "2" and doc["leader"] is True


def test_readyz(env: Env) -> None:
    assert env.node.request("GET", "/readyz")[0::2] == (
        200, b"[+]node ok\n[+]leader ok\n[+]store ok\n[+]db ok\n")
    assert env.node.request("GET", "/readyz?noleader")[0::2] == (200, b"[+]node ok\n")


def test_readyz_without_a_leader_is_503() -> None:
    env = start_env(leader=0)
    try:
        assert env.node.request("GET", "/readyz")[0::2] == (503, b"[+]node ok\n[+]leader does not exist\n")
    finally:
        stop_env(env)
