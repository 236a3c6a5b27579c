"""No input gives a 500 (issue 10, "Bad HTTP input"): each input found to give one, then a
table of awkward inputs on every endpoint, then hypothesis drawing raw requests. Against a
real ApiProcess with fake raft and store processes; tests/integration/test_http_fuzz.py
does the same against a real cluster."""

from __future__ import annotations

import gzip
import logging
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.component.test_api_http import Env, start_env, stop_env
from tests.component.test_api_support import Delayed, FakeServer, Handler, leader_endpoint
from tests.integration.test_http_fuzz import RawRequest, exchange, raw_requests, status_of
from zraft.api import backup_files
from zraft.wire.messages import Error, ErrorCode, WireMessage

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = start_env(max_body_bytes=1 << 20, request_timeout_ms=2000, max_duration_ms=2000, header_timeout_ms=1000)
    peers = [FakeServer(e.cluster.peer(i).api_zmq, leader_endpoint(i)) for i in (2, 3)]  # for /nodes
    path = e.node.config.db_path
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (CAST(x'fffe41' AS TEXT))")  # TEXT that is not UTF-8
    conn.commit()
    conn.close()
    for server in (e.raft_srv, e.store_srv):  # the fakes echo SQL; what they cannot, they refuse
        server.handler = tolerant(server.handler)
    yield e
    for peer in peers:
        peer.stop()
    stop_env(e)


def tolerant(handler: Handler) -> Handler:
    def handle(msg: WireMessage) -> WireMessage | Delayed | None:
        try:
            return handler(msg)
        except Exception as exc:  # noqa: BLE001 - a fake's limits are not the api's
            return Error(id=getattr(msg, "id", 0), code=ErrorCode.BAD_REQUEST, message=f"fake: {exc!r}")
    return handle


def send(env: Env, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", env.node.port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def request(method: str, target: str, body: bytes | None = b"", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode("latin-1")
    for name, value in headers:
        head += f"{name}: {value}\r\n".encode("latin-1")
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


def internal_errors(env: Env) -> int:
    status, doc = env.node.json("GET", "/debug/vars")
    assert status == 200
    count: int = doc["http"]["internal_errors"]
    return count


# == each input found to give a 500 ===========================================================
@pytest.mark.parametrize("name, data, expected", [
    ("a NUL byte on /db/request (apsw refuses it with ValueError: routed as a write)",
     request("POST", "/db/request", b'["SELECT 1\\u0000"]'), 200),
    ("a NUL byte alone on /db/request", request("POST", "/db/request", b'["\\u0000"]'), 200),
    ("a timeout too large for a float", request("GET", "/db/query?q=SELECT+1&timeout=" + "9" * 400 + "s"), 400),
    ("a timeout whose milliseconds overflow 64 bits", request("GET", "/db/query?q=SELECT+1&timeout=9999999999999h"), 400),
    ("a db_timeout whose milliseconds overflow 64 bits", request("GET", "/db/query?q=1&db_timeout=99999999999999h"), 400),
    ("a gzip body that is not gzip", request("POST", "/db/execute", b"\x1f\x8bnot gzip",
                                             (("Content-Encoding", "gzip"),)), 400),
    ("a deflate body that is not deflate", request("POST", "/db/query", b"nope", (("Content-Encoding", "deflate"),)), 400),
    ("broken chunked framing", request("POST", "/db/execute", None, (("Transfer-Encoding", "chunked"),))
     + b"zz\r\n[]\r\n0\r\n\r\n", 400),
    ("an Expect header that is not UTF-8 (it was echoed in the 417)",
     request("POST", "/db/execute", b"[]") .replace(b"Host: x", b"Host: x\r\nExpect: \xff\xfe"), 417),
    ("a NUL byte on /db/sql (apsw refuses it in the grammar check)", request("GET", "/db/sql?q=SELECT%201%00"), 200),
    ("a file with SQLite's magic that is not a database",
     request("POST", "/db/load", b"SQLite format 3\x00" + b"\x00" * 200), 400),
])
def test_inputs_that_gave_500(env: Env, name: str, data: bytes, expected: int) -> None:
    before = internal_errors(env)
    reply = send(env, data)
    assert status_of(reply) == expected, (name, reply[:300])
    assert internal_errors(env) == before


def test_a_backup_with_no_database_is_503_not_500() -> None:
    env = start_env()
    try:
        status, _, body = env.node.request("GET", "/db/backup?fmt=sql")
        assert status == 503 and body.startswith(b"backup failed: ")
        assert env.node.request("GET", "/db/backup")[0] == 503
    finally:
        stop_env(env)


def test_a_dump_keeps_text_that_is_not_utf8_byte_for_byte(env: Env) -> None:
    status, _, body = env.node.request("GET", "/db/backup?fmt=sql")
    assert status == 200
    assert b"INSERT INTO \"t\" VALUES('\xff\xfeA');" in body, body


def test_dump_round_trips_invalid_utf8(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (CAST(x'c3289f' AS TEXT))")
    conn.commit()
    conn.close()
    out = tmp_path / "dump.sql"
    backup_files.write_dump(str(db), out, (), threading.Event())
    assert b"'\xc3\x28\x9f'" in out.read_bytes()


# == a table of awkward inputs, every endpoint ================================================
PATHS = ["/db/execute", "/db/query", "/db/request", "/db/sql", "/db/load", "/db/backup", "/status", "/nodes",
         "/leader", "/readyz", "/debug/vars", "/", "/db", "/db/execute/", "//db/query", "/db/%00"]
BODIES = [b"", b"[]", b"{}", b"null", b"[null]", b'[""]', b"\xff\xfe\x00", b"[" * 5000, b"[" * 200 + b"]" * 200,
          b'[["SELECT ?", 1e308, -1e308, 18446744073709551616, -9223372036854775809]]',
          b'[["SELECT :a", {"": 1, "a": [1, 2, 256], "b": {"c": 1}}]]', b'[["SELECT ?", "x\'zz\'", [], true]]',
          b'["SELECT 1; SELECT 2", "PRAGMA foreign_keys=ON", "\\u0000", "\\ud83d\\ude00"]',
          b"SQLite format 3\x00", gzip.compress(b'["SELECT 1"]')]
CONTENT_TYPES = ["application/json", "text/plain", "text/plain; charset=latin-1", "application/x-www-form-urlencoded",
                 ";;==;", "multipart/form-data; boundary=", "\u00ff"]


@pytest.mark.parametrize("path", PATHS)
def test_every_endpoint_and_method_with_awkward_bodies(env: Env, path: str) -> None:
    before = internal_errors(env)
    queries = ("", "?q=SELECT%201&level=none", "?q=%00&timeout=1ms&pretty&timings&queue&wait",
               "?q=%ff%fe&freshness=1ns&freshness_strict&level=none&fmt=sql&key=a.b", "?level=strong&redirect&noparse")
    for m, method in enumerate(("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO")):
        for i, body in enumerate(BODIES):
            ctype = CONTENT_TYPES[(i + m) % len(CONTENT_TYPES)]
            query = queries[(i + m) % len(queries)]
            reply = send(env, request(method, path + query, body, (("Content-Type", ctype),)))
            status = status_of(reply)
            assert status and status < 500 or status == 503, (method, path, query, body[:40], reply[:300])
    assert internal_errors(env) == before


def test_huge_and_malformed_request_lines_and_headers(env: Env) -> None:
    cases = [
        b"GET /db/query?" + b"&".join(b"a%d=1" % i for i in range(3000)) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /status HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n",
        b"GET /status HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /status HTTP/9.9\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET /db/query?q=SELECT\xff HTTP/1.1\r\n\r\n",
        b"POST /db/execute HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /db/execute HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /db/execute HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"GET http://evil.example/db/query?q=SELECT+1&redirect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: \xff\xfe\r\nContent-Type: \xc3\x28\r\nConnection: close\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"POST /db/execute HTTP/1.1\r\nHost: x\r\nExpect: \xff\xfe\r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]",
        b"POST /db/execute HTTP/1.1\r\nContent-Type: text/plain\xff\r\nConnection: close\r\nContent-Length: 8\r\n\r\nSELECT 1",
        b"GET /status?key=%ED%A0%80&pretty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    before = internal_errors(env)
    for data in cases:  # what is incomplete waits for the header timeout (1 s here)
        reply = send(env, data, timeout=5)
        status = status_of(reply)
        assert status is None or status < 500 or status == 503, (data[:60], reply[:300])
    assert internal_errors(env) == before


def test_malformed_requests_are_not_logged_as_errors(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp logs its parser's 400s with a traceback at ERROR: anyone could fill the log."""
    with caplog.at_level(logging.INFO):
        send(env, b"\x16\x03\x01 not http\r\n\r\n")
        send(env, request("POST", "/db/execute", b"\x1f\x8bnot gzip", (("Content-Encoding", "gzip"),)))
        send(env, b"GET /status HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# == hypothesis ===============================================================================
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=raw_requests())
def test_hypothesis_raw_requests_never_get_a_500(env: Env, req: RawRequest) -> None:
    reply = exchange(env.node.port, req.data, 10, req.half_close)
    status = status_of(reply)
    assert status is None or status < 500 or status == 503, (req.data[:300], reply[:300])
    assert not reply.endswith(b"<timeout>"), req.data[:300]
    assert internal_errors(env) == 0
