"""Fuzzing every HTTP endpoint of a real 3-node cluster (issue 10, "Bad HTTP input"), and a
flood of idle connections.

Hypothesis draws raw HTTP/1.1 requests, sent byte for byte over a socket to a random node:
every route and some that are not, every method, rqlite's query parameters with valid,
absurd and overflowing values, SQL from a small grammar (tables, parameters, time and
random functions, refused statements, NUL bytes, random text) in every body form, random
JSON and bytes, deep nesting, gzip, chunked framing (sometimes broken), Expect, odd content
types. The properties: no response is a 500 (nor any 5xx but 503), no api process counts an
internal error (/debug/vars http.internal_errors), no node process restarts (the PIDs of all
nine are unchanged), and afterwards the cluster still takes a write and a linearizable read.

The idle flood opens N connections that never send a byte, from child processes (so that
this process's own descriptor limit does not cap N), then times a request on a new
connection to the leader, and checks the leader's api process held at most
api.max_connections (+ FD_RESERVE) descriptors.

- smoke, in the default run: `pytest tests/integration/test_http_fuzz.py` (about 30 s);
- long: `python -m tests.integration.test_http_fuzz --minutes 5 --idle 20000`, which prints
  its counts and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.helpers import execute, http, wait_for

ROUTES = {"/db/execute": ["POST"], "/db/query": ["GET", "POST"], "/db/request": ["POST"], "/db/sql": ["GET", "POST"],
          "/db/load": ["POST"], "/db/backup": ["GET"], "/status": ["GET", "HEAD"], "/nodes": ["GET", "HEAD"],
          "/leader": ["GET", "HEAD"], "/readyz": ["GET", "HEAD"], "/debug/vars": ["GET"]}
METHODS = ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"]
FLAGS = ["pretty", "timings", "transaction", "associative", "blob_array", "raft_index", "redirect", "qualify_columns",
         "norwrandom", "norwtime", "noparse", "queue", "wait", "noleader", "freshness_strict", "sync", "nonvoters",
         "vacuum", "compress"]
DURATIONS = ["timeout", "freshness", "db_timeout", "linearizable_timeout"]
LEVELS = ["none", "weak", "strong", "linearizable", "auto", "WEAK", "bogus", ""]
CONTENT_TYPES = ["application/json", "text/plain", "text/plain; charset=utf-8", "application/octet-stream",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", ";;==;", "\u00e9/\u00e9"]
TABLES = ["f0", "f1", "f2"]


# == what a request is made of ================================================================
def durations() -> st.SearchStrategy[str]:
    valid = st.one_of(st.sampled_from(["0", "1ns", "1ms", "250ms", "2s", "1m", "1h", "+1s", "1m0.5s"]),
                      st.integers(0, 5000).map(lambda n: f"{n}ms"))
    invalid = st.one_of(
        st.sampled_from(["3600001ms", "2h", "-1s", "1.5", "s", "", "99999999999999999999h", "9223372036854775807ms",
                         "1e9s", "NaN", "1h1h"]),
        st.text(st.characters(codec="utf-8"), max_size=8),
        st.integers(1, 400).map(lambda n: "9" * n + "s"),
    )
    return st.one_of(valid, valid, valid, invalid)


def params() -> st.SearchStrategy[Any]:
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(1 << 70), 1 << 70),
                       st.floats(allow_nan=False), st.text(max_size=20),
                       st.binary(max_size=8).map(lambda b: f"x'{b.hex()}'"), st.sampled_from(["x'zz'", "x'0'"]),
                       st.lists(st.integers(0, 300), max_size=5))
    return st.one_of(st.lists(scalar, max_size=3),
                     st.dictionaries(st.sampled_from(["a", "b", ":a", "", "\u00e9"]), scalar, max_size=2).map(lambda d: [d]),
                     st.tuples(st.dictionaries(st.just("a"), scalar, max_size=1), scalar).map(list))


def sql() -> st.SearchStrategy[str]:
    t = st.sampled_from(TABLES)
    return st.one_of(
        t.map(lambda n: f"CREATE TABLE IF NOT EXISTS {n} (id INTEGER PRIMARY KEY, a, b TEXT DEFAULT CURRENT_TIMESTAMP)"),
        t.map(lambda n: f"INSERT INTO {n}(a, b) VALUES(?, ?)"),
        t.map(lambda n: f"INSERT INTO {n}(a) VALUES(random())"),
        t.map(lambda n: f"INSERT INTO {n}(a, b) VALUES(:a, datetime('now'))"),
        t.map(lambda n: f"SELECT * FROM {n} WHERE a = ? OR id > ?"),
        t.map(lambda n: f"SELECT count(*), max(id) FROM {n}"),
        t.map(lambda n: f"UPDATE {n} SET b = ? WHERE id = ?"),
        t.map(lambda n: f"DELETE FROM {n} WHERE id > ?"),
        t.map(lambda n: f"DROP TABLE IF EXISTS {n}"),
        st.sampled_from([
            "SELECT 1", "SELECT random(), randomblob(4), datetime('now'), unixepoch('subsec')",
            "SELECT ?||?", "SELECT :a", "BEGIN", "COMMIT", "ROLLBACK", "PRAGMA foreign_keys=ON",
            "PRAGMA foreign_keys", "PRAGMA journal_mode=WAL", "PRAGMA wal_checkpoint", "PRAGMA synchronous=OFF",
            "ATTACH 'x.db' AS x", "CREATE TEMP TABLE tt(a)", "CREATE TABLE temp.tt(a)", "VACUUM",
            "EXPLAIN SELECT 1", "SELECT zeroblob(100)", "SELECT 1\x00", "\x00", "", ";", "SELECT 1; SELECT 2",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) SELECT count(*) FROM c",
            "SELECT * FROM sqlite_master", "SELECT * FROM nonexistent", "INSERT INTO nonexistent VALUES(1)",
            "SELECT '\U0001f600', char(0), x'ff'", "SELECT CAST(x'ff00' AS TEXT)"]),
        st.text(max_size=40),
    )


def statements() -> st.SearchStrategy[list[Any]]:
    one = st.one_of(sql(), st.tuples(sql(), params()).map(lambda sp: [sp[0], *sp[1]]))
    return st.lists(one, min_size=0, max_size=5)


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                        max_leaves=10)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["statements"] * 6 + ["sql", "json", "bytes", "deep", "empty", "sqlite", "dump"]))
    if kind == "statements":
        return json.dumps(draw(statements()), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == "sql":
        return draw(sql()).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(json_values())).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        n = draw(st.integers(1, 3000))
        return b"[" * n + draw(st.sampled_from([b"", b'"SELECT 1"', b"1"])) + b"]" * draw(st.integers(0, n))
    if kind == "sqlite":
        return b"SQLite format 3\x00" + draw(st.binary(max_size=300))
    if kind == "dump":
        lines = [s if isinstance(s, str) else s[0] for s in draw(statements())]
        return ("BEGIN TRANSACTION;\n" + "".join(f"{s};\n" for s in lines) + "COMMIT;\n").encode("utf-8", "surrogatepass")
    return b""


def pct(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    parts: list[str] = []
    for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=3, unique=True)):
        parts.append(flag if draw(st.booleans()) else f"{flag}={pct(draw(st.text(max_size=4)))}")
    for key in draw(st.lists(st.sampled_from(DURATIONS), max_size=2, unique=True)):
        parts.append(f"{key}={pct(draw(durations()))}")
    if draw(st.booleans()):
        level = draw(st.sampled_from(LEVELS[:4] * 4 + LEVELS[4:]))
        parts.append(f"level={pct(level)}")
    if draw(st.integers(0, 3)):
        parts.append(f"q={pct(draw(sql()))}")
    for key in draw(st.lists(st.sampled_from(["fmt", "key", "ver", "retries", "trailing_logs", "x"]), max_size=2)):
        value = draw(st.one_of(st.sampled_from(["sql", "binary", "2", "store.raft", "-1", "1" * 30]), st.text(max_size=6)))
        parts.append(f"{key}={pct(value)}")
    if draw(st.integers(0, 19)) == 0:  # raw bytes and broken escapes
        parts.append(draw(st.sampled_from(["%", "%zz", "%ff%fe", "a=%00", "==&&", "q=%ED%A0%80", "+" * 50])))
    return "&".join(draw(st.permutations(parts)))


@dataclass(frozen=True)
class RawRequest:
    node: int
    data: bytes
    half_close: bool = False
    """Shut the sending side once sent: for a request that announced more body than it has,
    which would otherwise wait out its deadline (the 408 has its own test)."""


@st.composite
def raw_requests(draw: st.DrawFn, nodes: int = 1) -> RawRequest:
    """One request (Connection: close) to one of `nodes` nodes, as bytes."""
    node = draw(st.integers(0, nodes - 1))
    if draw(st.integers(0, 29)) == 0:
        return RawRequest(node, draw(st.binary(min_size=1, max_size=300)), half_close=True)  # not HTTP at all
    path = draw(st.sampled_from(list(ROUTES)))
    method = draw(st.sampled_from(ROUTES[path]))
    odd = draw(st.integers(0, 9))
    if odd == 0:
        method = draw(st.sampled_from([*METHODS, "FOO", "get", "CONNECT", "TRACE"]))
    elif odd == 1:
        path = draw(st.one_of(st.just(path + "/"), st.just(path.upper()), st.text(
            st.characters(min_codepoint=33, max_codepoint=126), max_size=12).map(lambda t: "/" + pct(t))))
    query = draw(query_strings())
    target = path + (f"?{query}" if query or draw(st.booleans()) else "")
    body = draw(bodies()) if method not in ("GET", "HEAD") or draw(st.integers(0, 9)) == 0 else b""
    headers = [("Host", "x"), ("Connection", "close")]
    ctype = draw(st.sampled_from(CONTENT_TYPES[:1] * 6 + CONTENT_TYPES))
    if ctype:
        headers.append(("Content-Type", ctype))
    framing = draw(st.sampled_from(["length"] * 8 + ["chunked", "broken-chunked", "gzip", "bad-gzip", "expect", "short"]))
    if framing == "gzip":
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    elif framing == "bad-gzip":
        headers.append(("Content-Encoding", draw(st.sampled_from(["gzip", "deflate", "br", "x"]))))
    elif framing == "expect":
        headers.append(("Expect", draw(st.sampled_from(["100-continue", "100-Continue", "nope"]))))
    if framing in ("chunked", "broken-chunked"):
        headers.append(("Transfer-Encoding", "chunked"))
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        if framing == "broken-chunked":
            payload = draw(st.sampled_from([b"zz\r\n", b"5\r\nab", b"ffffffffffffffffff\r\n", b"1\r\nab\r\n"])) + payload
    else:
        length = len(body) if framing != "short" else len(body) + draw(st.integers(1, 10))
        headers.append(("Content-Length", str(length)))
        payload = body
    head = f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogatepass")
    head += b"".join(f"{k}: {v}\r\n".encode("utf-8") for k, v in headers)
    if draw(st.integers(0, 9)) == 0:  # a header of raw bytes, any name: not UTF-8, odd, repeated
        name = draw(st.sampled_from([b"Content-Type", b"Expect", b"Accept", b"Origin", b"X-Fuzz", b"Content-Encoding"]))
        value = draw(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
        head += name + b": " + value + b"\r\n"
    return RawRequest(node, head + b"\r\n" + payload, half_close=framing in ("short", "broken-chunked"))


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")


def status_of(reply: bytes) -> int | None:
    """The final status of a reply (1xx skipped); None for no reply (a closed connection)."""
    while match := _STATUS.match(reply):
        status = int(match.group(1))
        if status >= 200:
            return status
        end = reply.find(b"\r\n\r\n")
        if end < 0:
            return None
        reply = reply[end + 4:]
    return None


def exchange(port: int, data: bytes, timeout: float, half_close: bool = False) -> bytes:
    """Send `data`, read until the server closes (or `timeout` passes: b"<timeout>" is appended)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may answer and close before taking everything
            pass
        out = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                out += chunk
        except TimeoutError:
            return out + b"<timeout>"
        except OSError:
            return out
        return out + b"<timeout>"


# == the fuzz run =============================================================================
@dataclass
class Counts:
    requests: int = 0
    statuses: collections.Counter[int | None] = field(default_factory=collections.Counter)
    client_timeouts: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        top = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=lambda kv: -kv[1]))
        return (f"{self.requests} requests; statuses {{{top}}}; 500s: {self.statuses[500]}; "
                f"client timeouts: {self.client_timeouts}")


def fuzz(ports: list[int], seconds: float, counts: Counts, chunk: int = 200, timeout: float = 30.0) -> None:
    """Send hypothesis-drawn requests to `ports` for `seconds`; a 5xx other than 503 fails
    (hypothesis then shrinks it to a minimal request, raised as AssertionError)."""

    @settings(max_examples=chunk, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(req=raw_requests(len(ports)))
    def one(req: RawRequest) -> None:
        reply = exchange(ports[req.node], req.data, timeout, req.half_close)
        status = status_of(reply)
        counts.requests += 1
        counts.statuses[status] += 1
        if reply.endswith(b"<timeout>"):
            counts.client_timeouts += 1
        assert status is None or status < 500 or status == 503, \
            f"node {req.node + 1} answered {status} to {req.data[:500]!r}: {reply[:500]!r}"

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        one()


def internal_errors(port: int) -> int:
    status, doc = http("GET", f"http://127.0.0.1:{port}/debug/vars")
    assert status == 200, doc
    return int(doc["http"].get("internal_errors", 0))


def still_works(ports: list[int]) -> None:
    """A write through a follower and a linearizable read on every node."""
    def write() -> bool:
        status, doc = execute(ports[-1], ["CREATE TABLE IF NOT EXISTS fuzz_ok(a)", "INSERT INTO fuzz_ok VALUES(1)"])
        return status == 200 and "error" not in json.dumps(doc)
    wait_for(write, 30, "a write after fuzzing")
    for port in ports:
        status, doc = http("POST", f"http://127.0.0.1:{port}/db/query?level=linearizable",
                           ["SELECT count(*) FROM fuzz_ok"])
        assert status == 200 and doc["results"][0]["values"][0][0] >= 1, doc


# == idle connections =========================================================================
HOLDER = r"""
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
socks, failed = [], 0
for i in range(count):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=10,
                                              source_address=("127.0.0.%d" % (2 + i % 200), 0)))
    except OSError:
        failed += 1
print("opened", len(socks), "failed", failed, flush=True)
sys.stdin.read()
"""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_flood(port: int, total: int, api_pid: int | None, per_process: int = 5000) -> dict[str, Any]:
    """Hold `total` connections to 127.0.0.1:`port` that never send a byte, then time one
    request on a new connection. The flood comes from source addresses 127.0.0.2-201 (Linux
    routes the whole 127/8 to lo), so that ephemeral ports never run out."""
    procs = []
    report: dict[str, Any] = {"connections": total}
    try:
        started = time.monotonic()
        for i in range(0, total, per_process):
            procs.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(port), str(min(per_process, total - i))],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        opened = failed = 0
        peak_fds = 0
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert line and line[0] == "opened", line
            opened += int(line[1])
            failed += int(line[3])
            if api_pid:
                peak_fds = max(peak_fds, open_fds(api_pid))
        report.update(opened=opened, connect_failures=failed, open_seconds=round(time.monotonic() - started, 1))
        if api_pid:
            report["api_fds"] = max(peak_fds, open_fds(api_pid))
        start = time.monotonic()
        try:
            status, _ = http("GET", f"http://127.0.0.1:{port}/db/query?q=SELECT+1&level=none", timeout=10)
            report["new_client_status"] = status
        except OSError as exc:  # before issue 10: the node was unreachable
            report["new_client_status"] = repr(exc)
        report["new_client_seconds"] = round(time.monotonic() - start, 3)
        try:
            status, doc = http("GET", f"http://127.0.0.1:{port}/debug/vars", timeout=10)
            report["api_connections"] = doc["http"].get("connections") if status == 200 else doc
        except OSError as exc:
            report["api_connections"] = repr(exc)
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return report


# == the cluster ==============================================================================
def all_pids(cluster: Any) -> dict[str, int | None]:
    return {f"node{s.id}-{proc}": pid for s in cluster.status() for proc, pid in s.pids.items()}


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.integration.conftest import start_cluster, stop_cluster
    cluster = start_cluster(tmp_path_factory.mktemp("fuzz"))
    try:
        wait_for(cluster.leader_id, 20, "a leader")
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.mark.integration
def test_fuzzing_every_endpoint_gives_no_500_and_no_restart(fuzz_cluster: Any) -> None:
    before = all_pids(fuzz_cluster)
    assert all(before.values()), before
    counts = Counts()
    fuzz(fuzz_cluster.ports(), seconds=15, counts=counts, chunk=100)
    print(counts.line())
    assert counts.requests >= 100
    assert all_pids(fuzz_cluster) == before
    assert [internal_errors(p) for p in fuzz_cluster.ports()] == [0, 0, 0]
    still_works(fuzz_cluster.ports())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (0: skip)")
    parser.add_argument("--idle", type=int, default=20000, help="idle connections to open against the leader (0: skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where the cluster lives (default: a temporary folder)")
    args = parser.parse_args()
    from tests.integration.conftest import start_cluster, stop_cluster
    root = args.dir or Path(tempfile.mkdtemp(prefix="zraft-fuzz-"))
    cluster = start_cluster(root)
    ok = True
    try:
        leader = wait_for(cluster.leader_id, 20, "a leader")
        assert leader is not None
        before = all_pids(cluster)
        print(f"cluster in {root}: HTTP ports {cluster.ports()}, leader node {leader}, pids {before}", flush=True)
        counts = Counts()
        if args.minutes > 0:
            try:
                fuzz(cluster.ports(), seconds=args.minutes * 60, counts=counts)
            except AssertionError as exc:
                ok = False
                print(f"FAIL: {exc}", flush=True)
            print(f"fuzz: {counts.line()}", flush=True)
        if args.idle > 0:
            report = idle_flood(cluster.port(leader), args.idle, cluster.pid(leader, "api"))
            print(f"idle flood: {report}", flush=True)
            if report["new_client_status"] != 200 or report["new_client_seconds"] > 5:
                ok = False
                print("FAIL: the new client was not served in time", flush=True)
        after = all_pids(cluster)
        errors = [internal_errors(p) for p in cluster.ports()]
        print(f"restarts: {sum(before[k] != after[k] for k in before)}; internal errors per node: {errors}", flush=True)
        if after != before or any(errors):
            ok = False
            print(f"FAIL: pids before {before}, after {after}", flush=True)
        still_works(cluster.ports())
    finally:
        stop_cluster(cluster)
    print("OK" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
