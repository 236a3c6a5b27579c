"""Bounds on what one HTTP client can hold in the api process (issue 10, "Unbounded input"):
durations clamped to api.max_duration_ms with a 400, admission slots released on every path
(a client that leaves, a body that never comes, overflowing durations), a bounded write queue,
and connections bounded in time (header and idle timeouts, a client that stops reading) and
in number (api.max_connections evicts the idlest, so a flood of idle sockets never locks a
new client out). Against a real ApiProcess with fake raft and store processes."""

from __future__ import annotations

import logging
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.component.test_api_http import Env, start_env, stop_env
from tests.component.test_api_support import FakeServer, leader_endpoint
from zraft.api.params import format_duration, parse_duration
from zraft.procs.api_proc import FD_RESERVE, HTTP_BACKLOG, connection_cap, listen_backlog, raise_fd_limit
from zraft.wire.messages import Propose, Query

pytestmark = pytest.mark.timeout(60)

HUGE = ("99999999999999999999h", "9" * 400 + "s", "1.5h", "3600001ms")


@pytest.fixture
def env() -> Iterator[Env]:
    e = start_env()
    yield e
    stop_env(e)


def in_flight(env: Env) -> int:
    assert env.node.process is not None and env.node.process.service is not None
    return env.node.process.service.in_flight


def conn_stats(env: Env) -> dict[str, int]:
    status, doc = env.node.json("GET", "/debug/vars")
    assert status == 200
    stats: dict[str, int] = doc["http"]["connections"]
    return stats


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def connect(env: Env, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", env.node.port), timeout=timeout)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), None if it did not in time."""
    start = time.monotonic()
    sock.setblocking(False)
    while time.monotonic() - start < seconds:
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
            except BlockingIOError:
                pass
    return None


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, read from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


# == durations ================================================================================
ENDPOINTS = [
    ("GET", "/db/query?q=SELECT+1&level=none&"), ("POST", "/db/query?"), ("POST", "/db/execute?"),
    ("POST", "/db/execute?queue&"), ("POST", "/db/request?"), ("POST", "/db/load?"), ("GET", "/db/backup?"),
    ("GET", "/db/sql?q=SELECT+1&"), ("GET", "/status?"), ("GET", "/nodes?"), ("GET", "/leader?"),
    ("GET", "/readyz?sync&"), ("GET", "/debug/vars?"),
]


@pytest.mark.parametrize("key", ["timeout", "freshness", "db_timeout", "linearizable_timeout"])
def test_a_duration_over_the_maximum_is_400_everywhere_and_holds_no_slot(env: Env, key: str) -> None:
    """The reproduction: `timeout=99999999999999999999h` overflowed the wire's 64-bit
    milliseconds inside the batched propose, and the request, never answered, kept its
    admission slot forever (10,050 of them left the leader answering 503 to everyone)."""
    for value in HUGE:
        for method, path in ENDPOINTS:
            status, _, body = env.node.request(method, f"{path}{key}={value}", ["SELECT 1"], timeout=5)
            assert (status, body) == (400, f"{key} is too long: at most 1h0m0s\n".encode()), (path, value)
    assert in_flight(env) == 0
    assert env.raft_srv.of(Propose) == [] and env.store_srv.of(Query) == []


def test_a_duration_at_the_maximum_is_accepted_and_the_maximum_is_a_setting() -> None:
    env = start_env(max_duration_ms=2_000)
    try:
        assert env.node.request("GET", "/db/query?q=SELECT+1&level=none&timeout=2s")[0] == 200
        status, _, body = env.node.request("GET", "/db/query?q=SELECT+1&level=none&timeout=2001ms")
        assert (status, body) == (400, b"timeout is too long: at most 2s\n")
    finally:
        stop_env(env)
    env = start_env()
    try:
        assert env.node.request("POST", "/db/execute?timeout=1h", ["INSERT INTO t VALUES(1)"])[0] == 200
        assert env.node.request("GET", "/db/query?q=SELECT+1&level=none&timeout=60m&db_timeout=3600s")[0] == 200
    finally:
        stop_env(env)


def test_overflowing_durations_never_use_up_admission() -> None:
    env = start_env(max_in_flight=3)
    try:
        for i in range(30):
            method, path = ENDPOINTS[i % len(ENDPOINTS)]
            assert env.node.request(method, f"{path}timeout=99999999999999999999h", ["SELECT 1"])[0] == 400
        assert in_flight(env) == 0
        assert env.node.request("POST", "/db/execute", ["INSERT INTO t VALUES(1)"])[0] == 200
    finally:
        stop_env(env)


def test_duration_helpers() -> None:
    assert parse_duration("1h") == 3600 and parse_duration("9" * 400 + "h") == float("inf")
    assert [format_duration(s) for s in (3600, 5400, 90, 2.5, 0.3)] == ["1h0m0s", "1h30m0s", "1m30s", "2.5s", "300ms"]


# == admission slots ==========================================================================
def test_a_client_that_leaves_frees_its_slot_at_once() -> None:
    env = start_env(max_in_flight=1)
    env.store.delay = 5.0
    try:
        sock = connect(env)
        sock.sendall(b"GET /db/query?q=SELECT+1&level=none&timeout=1h HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: env.store_srv.of(Query), 5, "the query to reach the store")
        assert in_flight(env) == 1
        sock.close()
        wait_until(lambda: in_flight(env) == 0, 2, "the slot to be released")
    finally:
        stop_env(env)


def test_a_body_that_never_arrives_is_408_and_frees_its_slot() -> None:
    env = start_env(max_in_flight=1, request_timeout_ms=400)
    try:
        with connect(env) as sock:
            sock.sendall(b"POST /db/execute?timeout=100ms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n[\"INSERT")
            start = time.monotonic()
            reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 408 "), reply
            assert reply.endswith(b"request body not received within 400ms\n")
            assert time.monotonic() - start < 3
            assert b"\r\nConnection: close\r\n" in reply  # the half-read stream is not reused
        assert in_flight(env) == 0 and env.raft_srv.received == []
    finally:
        stop_env(env)


def test_a_longer_timeout_gives_a_body_longer() -> None:
    env = start_env(request_timeout_ms=300)
    try:
        with connect(env) as sock:
            sock.sendall(b"POST /db/query?timeout=1s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\n[\"SEL\r\n")
            start = time.monotonic()
            reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 408 ") and reply.endswith(b"within 1s\n"), reply
            assert 0.8 < time.monotonic() - start < 3
        assert in_flight(env) == 0
    finally:
        stop_env(env)


def test_the_write_queue_is_bounded() -> None:
    env = start_env(max_queued_statements=5)
    env.store.delay = 3.0  # flushes wait: the queue fills
    try:
        status, doc = env.node.json("POST", "/db/execute?queue", ["INSERT INTO t VALUES(1)"] * 5)
        assert status == 200 and "sequence_number" in doc
        status, _, body = env.node.request("POST", "/db/execute?queue", ["INSERT INTO t VALUES(2)"])
        assert (status, body) == (503, b"write queue full: 5 statements waiting, at most 5\n")
        assert env.node.request("POST", "/db/execute?queue&wait", [])[0] == 200  # a barrier is not refused
        env.store.delay = 0.0
        wait_until(lambda: env.node.request("POST", "/db/execute?queue", ["INSERT INTO t VALUES(3)"])[0] == 200,
                   10, "the queue to drain")
        assert in_flight(env) == 0
    finally:
        stop_env(env)


# == HTTP details =============================================================================
def test_redirect_carries_the_query_string_exactly_as_sent() -> None:
    env = start_env(leader=2)
    leader = FakeServer(env.cluster.peer(2).api_zmq, leader_endpoint(2))
    try:
        for query in ("redirect&x=a%20b%2Bc%26d", "redirect&a=%7e%e2%82%ac%2f/%3F?&b=%zz", "redirect"):
            status, headers, _ = env.node.request("POST", f"/db/execute?{query}", ["INSERT INTO t VALUES(1)"])
            assert status == 301
            assert headers["location"] == f"http://{env.cluster.peer(2).http}/db/execute?{query}"
        status, headers, _ = env.node.request("GET", "/db/query?redirect&q=SELECT%20%271%2B1%27")
        assert (status, headers["location"]) == (
            301, f"http://{env.cluster.peer(2).http}/db/query?redirect&q=SELECT%20%271%2B1%27")
    finally:
        leader.stop()
        stop_env(env)


def test_expect_100_continue_is_answered_only_when_the_body_is_wanted() -> None:
    env = start_env(max_body_bytes=1024)
    try:
        with connect(env) as sock:
            sock.sendall(b"POST /db/execute HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 27\r\n\r\n")
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b'["INSERT INTO t VALUES(1)"]')
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        with connect(env) as sock:  # too large: refused without asking for the body
            sock.sendall(b"POST /db/execute HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        status, _, body = env.node.request("POST", "/db/execute", ["SELECT 1"], headers={"Expect": "teapot"})
        assert (status, body) == (417, b"unsupported Expect header: only 100-continue is\n")
    finally:
        stop_env(env)


# == connections ==============================================================================
def test_a_connection_without_a_complete_header_is_closed_after_the_header_timeout() -> None:
    env = start_env(header_timeout_ms=300)
    try:
        silent = connect(env)
        loris = connect(env)
        loris.sendall(b"GET /status HTTP/1.1\r\n")

        def dribble() -> None:
            for _ in range(40):
                try:
                    loris.sendall(b"X")
                except OSError:
                    return
                time.sleep(0.05)
        threading.Thread(target=dribble, daemon=True).start()
        took = closed_within(silent, 3)
        assert took is not None and 0.25 < took < 3, took
        assert closed_within(loris, 3) is not None
        silent.close()
        loris.close()
        assert conn_stats(env)["header_timeouts"] == 2
        # a prompt client is not affected
        assert env.node.request("GET", "/status")[0] == 200
    finally:
        stop_env(env)


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    env = start_env(idle_timeout_ms=500)
    try:
        with connect(env) as sock:
            for _ in range(3):  # keep-alive works, and each request restarts the clock
                sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(sock).startswith(b"HTTP/1.1 200 ")
                time.sleep(0.3)
            took = closed_within(sock, 3)
            assert took is not None and 0.1 < took < 3, took
        stats = conn_stats(env)
        assert stats["idle_timeouts"] == 1 and stats["open"] == 1  # the /debug/vars request's own
    finally:
        stop_env(env)


def test_a_client_that_stops_reading_its_response_is_dropped() -> None:
    env = start_env(idle_timeout_ms=300)
    try:
        sock = connect(env)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sql = "SELECT '" + "x" * (8 << 20) + "'"
        body = ('["' + sql + '"]').encode()
        sock.sendall(b"POST /db/query?level=none HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        # the response (8 MB) cannot be written; after two idle periods without progress it is aborted
        wait_until(lambda: conn_stats(env)["idle_timeouts"] == 1, 10, "the stalled connection to be dropped")
        assert conn_stats(env)["open"] == 1
        sock.close()
    finally:
        stop_env(env)


def hold_connections(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return socks


@pytest.fixture
def fd_room() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 6000:
        pytest.skip(f"needs 6000 file descriptors, RLIMIT_NOFILE hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_2000_idle_connections_do_not_lock_out_a_new_client(fd_room: None) -> None:
    """The smoke version of "20,000 idle connections" (the full one runs against a real
    cluster: python -m tests.integration.test_http_fuzz --idle 20000)."""
    env = start_env(max_connections=200)
    socks: list[socket.socket] = []
    try:
        keep_alive = connect(env)  # an idle keep-alive connection from before the flood
        keep_alive.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(keep_alive)
        socks = hold_connections(env.node.port, 2000)
        start = time.monotonic()
        status, doc = env.node.json("GET", "/db/query?q=SELECT+1&level=none", timeout=5)
        assert status == 200 and doc["results"]
        assert time.monotonic() - start < 5
        stats = conn_stats(env)
        assert stats["open"] <= 201 and stats["evicted"] >= 1800, stats
        assert closed_within(keep_alive, 1) is not None  # the idlest went first
        keep_alive.close()
    finally:
        for s in socks:
            s.close()
        stop_env(env)


def test_busy_connections_are_never_evicted() -> None:
    env = start_env(max_connections=3)
    env.store.delay = 1.0
    try:
        results: list[int] = []
        slow = [threading.Thread(target=lambda: results.append(
            env.node.request("GET", "/db/query?q=SELECT+1&level=none")[0])) for _ in range(3)]
        for t in slow:
            t.start()
        wait_until(lambda: len(env.store_srv.of(Query)) == 3, 5, "three busy connections")
        idle = hold_connections(env.node.port, 5)
        for t in slow:
            t.join(10)
        assert results == [200, 200, 200]
        for s in idle:
            s.close()
        stats = conn_stats(env)
        assert stats["over_cap"] >= 1 and stats["evicted"] >= 1, stats
    finally:
        stop_env(env)


def test_the_descriptor_limit_is_raised_and_bounds_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        with caplog.at_level(logging.INFO, logger="zraft.procs.api_proc"):
            assert raise_fd_limit() == hard
        assert f"raised RLIMIT_NOFILE soft limit from 1024 to {hard}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert listen_backlog(1024) == 64 and listen_backlog(65536) == HTTP_BACKLOG
    assert connection_cap(10_000, 1024) == 1024 - FD_RESERVE - 2 * 64
    assert connection_cap(10_000, 20_000) == 10_000 and connection_cap(10_000, 1 << 20) == 10_000
