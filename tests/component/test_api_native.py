"""The native ZeroMQ endpoint and client, follower->leader forwarding between two real API
processes, socket edge cases, process signals, and the pure parsers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import orjson
import pytest
import zmq

from tests.component.test_api_http import Env, start_env, stop_env
from tests.component.test_api_support import (
    ApiNode,
    FakeRaft,
    FakeServer,
    FakeStore,
    make_cluster,
    remove_cluster,
)
from zraft.api.errors import BadRequest
from zraft.api.params import parse_duration
from zraft.api.statements import check_count, normalize_client_statement, parse_body
from zraft.client import Client, ClientError
from zraft.config import render
from zraft.wire import decode
from zraft.store.command import Statement
from zraft.wire.messages import ClientExecute, ClientOptions, Error, Propose, Query, QueryOptions
from zraft.wire.sql import statement_from_pair

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def env() -> Iterator[Env]:
    e = start_env()
    yield e
    stop_env(e)


def test_native_client_round_trip(env: Env) -> None:
    with Client(env.node.config.me().api_zmq, timeout=5) as client:
        written = client.execute(["CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)",
                                  ["INSERT INTO t(b) VALUES(?)", b"\x00\x01"],
                                  ("INSERT INTO t(id) VALUES(:id)", {"id": 7})], transaction=True)
        assert written.results == [{}, {"last_insert_id": 1, "rows_affected": 1},
                                   {"last_insert_id": 1, "rows_affected": 1}]
        assert written.raft_index == 1
        cmd = env.proposals()[0]
        assert cmd.transaction is True
        assert cmd.statements[1] == Statement("INSERT INTO t(b) VALUES(?)", [b"\x00\x01"])
        assert cmd.statements[2] == Statement("INSERT INTO t(id) VALUES(:id)", {"id": 7})
        env.raft.read_index = 5
        read = client.query(["SELECT * FROM t"], level="linearizable", associative=True)
        assert read.results[0]["values"] == [["SELECT * FROM t", "null"]]
        [query] = env.store_srv.of(Query)
        assert query.min_applied == 5 and query.options == QueryOptions(associative=True)
        status = client.status()
        assert status["store"]["raft"]["state"] == "Leader"
        with pytest.raises(ClientError) as bad:
            client.query(["SELECT 1"], level="sometimes")
        assert bad.value.code == "bad_request"
        with pytest.raises(ClientError) as empty:
            client.execute([])
        assert empty.value.code == "bad_request"
        with pytest.raises(TypeError, match="associatve"):  # a misspelt flag is not silently ignored
            client.query(["SELECT 1"], associatve=True)


def test_native_client_sees_not_leader_without_a_leader() -> None:
    env = start_env(leader=0)
    try:
        with Client(env.node.config.me().api_zmq, timeout=5) as client:
            with pytest.raises(ClientError) as exc:
                client.execute(["INSERT INTO t VALUES(1)"])
            assert (exc.value.code, exc.value.message, exc.value.leader) == ("not_leader", "leader not found", 0)
    finally:
        stop_env(env)


def test_forwarded_request_is_not_forwarded_again() -> None:
    env = start_env(leader=3)
    try:
        with Client(env.node.config.me().api_zmq, timeout=5) as client:
            reply = client._rpc.call(ClientExecute(id=0, statements=[Statement("INSERT INTO t VALUES(1)")],
                                                   options=ClientOptions(forwarded=True)), 5)
        assert isinstance(reply, Error)
        assert (reply.code, reply.leader) == ("not_leader", 3)
        assert env.raft.log == {}
    finally:
        stop_env(env)


def test_native_statements_are_counted_and_a_malformed_request_is_answered() -> None:
    """What the codec refuses to decode is answered bad_request when its id could be read
    (as the statement checks answered it before the codec validated statements)."""
    env = start_env(max_statements=2)
    try:
        with Client(env.node.config.me().api_zmq, timeout=5) as client:
            with pytest.raises(ClientError) as many:
                client.execute(["INSERT INTO t VALUES(1)"] * 3)
            assert (many.value.code, many.value.message) == ("bad_request", "too many statements: 3 > 2")
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(env.node.config.me().api_zmq)
            sock.send_multipart([orjson.dumps({"v": 1, "k": "client_execute", "id": 7,
                                               "statements": [["INSERT INTO t VALUES(?)", [{"b64": "!!"}]]]})])
            assert sock.poll(5000), "no answer"
            reply = decode(sock.recv_multipart())
        finally:
            sock.close()
            ctx.term()
        assert isinstance(reply, Error) and (reply.id, reply.code) == (7, "bad_request")
        assert "base64" in reply.message
        assert env.raft.log == {}
    finally:
        stop_env(env)


def test_http_follower_forwards_to_a_real_leader_process() -> None:
    cluster = make_cluster()
    servers: list[FakeServer] = []
    nodes: list[ApiNode] = []
    try:
        rafts = {1: FakeRaft(1, leader=2), 2: FakeRaft(2, leader=2)}
        for node_id, raft in rafts.items():
            config = cluster.config(node_id)
            servers += [FakeServer(config.raft_rpc, raft.handle),
                        FakeServer(config.store_rpc, FakeStore(raft).handle)]
            nodes.append(ApiNode(config))
        follower = nodes[0]
        status, headers, body = follower.request("POST", "/db/execute?raft_index",
                                                 [["INSERT INTO foo VALUES(?)", "x'00'"]])
        assert (status, body) == (200, b'{"results":[{"last_insert_id":1,"rows_affected":1}],"raft_index":1}')
        assert headers["x-rqlite-served-by"] == cluster.peer(2).http
        assert rafts[1].log == {} and len(rafts[2].log) == 1
        status, doc = follower.json("GET", "/db/query?q=SELECT+2&level=strong")
        assert status == 200 and doc["results"][0]["values"] == [["SELECT 2", "null"]]
        status, doc = follower.json("GET", "/db/query?q=SELECT+3")
        assert status == 200 and doc["results"][0]["values"] == [["SELECT 3", "null"]]
        # The leader's /nodes sees the follower's native endpoint as reachable.
        status, doc = nodes[1].json("GET", "/nodes?timeout=500ms")
        assert doc["1"]["reachable"] and doc["2"]["leader"] and not doc["3"]["reachable"]
    finally:
        for node in nodes:
            node.stop()
        for server in servers:
            server.stop()
        remove_cluster(cluster)


def test_request_waits_for_a_late_raft_and_a_timed_out_one_is_never_sent() -> None:
    cluster = make_cluster()
    config = cluster.config(1)
    node = ApiNode(config)
    raft = FakeRaft(1, leader=1)
    servers: list[FakeServer] = []
    try:
        status, doc = node.json("POST", "/db/execute?timeout=200ms", ["INSERT INTO t VALUES(1)"])
        assert status == 200 and doc["results"] == [] and "within" in doc["error"]
        servers.append(FakeServer(config.store_rpc, FakeStore(raft).handle))
        servers.append(FakeServer(config.raft_rpc, raft.handle))
        status, doc = node.json("POST", "/db/execute", ["INSERT INTO t VALUES(2)"])
        assert status == 200 and doc["results"] == [{"last_insert_id": 1, "rows_affected": 1}]
        assert len(servers[1].of(Propose)) == 1  # the abandoned first proposal never left
    finally:
        node.stop()
        for server in servers:
            server.stop()
        remove_cluster(cluster)


def test_process_exits_0_on_sigterm_and_1_when_it_cannot_start(tmp_path) -> None:
    cluster = make_cluster()
    try:
        config_path = tmp_path / "node.toml"
        config_path.write_text(render(cluster.config(1)))
        script = textwrap.dedent(f"""
            import sys
            from zraft.config import load
            from zraft.procs.api_proc import run
            sys.exit(run(load({str(config_path)!r})))
        """)
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        proc = subprocess.Popen([sys.executable, "-c", script], env=env)
        port = cluster.http_ports[1]
        deadline = time.monotonic() + 15
        import http.client
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/readyz?noleader")
                assert conn.getresponse().status == 200
                conn.close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        # A second process cannot bind the same HTTP port: a fatal start, exit code 1.
        second = subprocess.run([sys.executable, "-c", script], env=env, timeout=20, capture_output=True)
        assert second.returncode == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        remove_cluster(cluster)


# == pure parsers =============================================================================
@pytest.mark.parametrize("text, seconds", [
    ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0), ("250us", 0.00025),
    ("-2s", -2.0),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1s2", "ms", "+"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_body_parsing_maps_values_like_rqlite() -> None:
    stmts = parse_body(["SELECT 1", ["SELECT ?", 1 << 70, 2.5, "X'AB'", "x'abc'", [], [0, 255]],
                        ["SELECT :a", {"a": 1}, {"b": None}]], 10)
    assert stmts[1].params == [float(1 << 70), 2.5, b"\xab", "x'abc'", b"", b"\x00\xff"]
    assert stmts[2].params == {"a": 1, "b": None}
    with pytest.raises(BadRequest, match="positional and named"):
        parse_body([["SELECT ?, :a", 1, {"a": 1}]], 10)
    with pytest.raises(BadRequest, match="too many statements"):
        parse_body(["SELECT 1"] * 3, 2)


def test_client_statements_and_wire_pairs_validate() -> None:
    stmts = [Statement("A", None), Statement("B", [b"\x00", 1, None]), Statement("C", {"x": "y"})]
    assert [normalize_client_statement(s) for s in ("A", ("B", [b"\x00", 1, None]), ["C", {"x": "y"}])] == stmts
    pairs = (["A", None], ["B", [{"b64": "AA=="}, 1, None]], ["C", {"x": "y"}])
    assert [statement_from_pair(p) for p in pairs] == stmts
    for bad in ([1, None], ["A", 5], ["A", [{"b64": "!!"}]], ["A", None, None]):
        with pytest.raises(ValueError):
            statement_from_pair(bad)
    with pytest.raises(BadRequest, match="no statements"):
        check_count([], 10)
    with pytest.raises(BadRequest, match="too many statements: 3 > 2"):
        check_count(stmts, 2)
