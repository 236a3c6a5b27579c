"""`zraft shell` run non-interactively (stdin piped) against a fake rqlite HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from zraft.shell import format_table, is_query

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

TABLES = {"columns": ["name"], "types": ["text"], "values": [["foo"]]}
ROWS = {"columns": ["id", "name", "data"], "types": ["integer", "text", "blob"],
        "values": [[1, "fiona", None], [2, "o'brien", "AQI="]]}
MASTER = {"columns": ["type", "name", "tbl_name", "sql"], "types": ["text"] * 4,
          "values": [["table", "foo", "foo", "CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT, data BLOB)"],
                     ["index", "foo_name", "foo", "CREATE INDEX foo_name ON foo(name)"]]}
DUMP_ROWS = {"columns": ["id", "name", "data"], "types": ["integer", "text", "blob"],
             "values": [[1, "fiona", None], [2, "o'brien", [1, 2]]]}


class FakeRqlite(BaseHTTPRequestHandler):
    """Canned rqlite-shaped answers; records every request as (method, path, query, body)."""

    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, doc: Any = None, text: str | None = None) -> None:
        body = text.encode() if text is not None else json.dumps(doc).encode() if doc is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Rqlite-Version", "v0-fake")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path in ("/db/load", "/boot"):
            self.server.calls.append((method, url.path, query, raw))
            if raw.startswith(b"SQLite format 3\x00") or url.path == "/db/load":
                return self._reply(200, {"results": []}) if url.path == "/db/load" else self._reply(200)
            return self._reply(400, text="invalid SQLite data")
        body = json.loads(raw) if raw else None
        self.server.calls.append((method, url.path, query, body))
        timed = "timings" in query
        if url.path == "/db/request" and not self.server.has_request:
            return self._reply(404)
        if url.path in ("/db/query", "/db/request") and method == "POST":
            sql = body[0]
            if "nosuch" in sql:
                return self._reply(200, {"results": [{"error": "no such table: nosuch"}]})
            if "stale" in sql:
                return self._reply(200, {"results": [], "error": "stale read"})
            if sql.startswith("SELECT type, name, tbl_name"):
                return self._reply(200, {"results": [MASTER]})
            if "sqlite_master" in sql and "index" in sql:
                return self._reply(200, {"results": [{"columns": ["name"], "types": ["text"],
                                                      "values": [["foo_name"]]}]})
            if "sqlite_master" in sql and "'table'" in sql:
                return self._reply(200, {"results": [TABLES]})
            if "sqlite_master" in sql:
                return self._reply(200, {"results": [{"columns": ["sql"], "types": ["text"],
                                                      "values": [[MASTER["values"][0][3]]]}]})
            if sql.startswith("SELECT * FROM \"foo\""):
                return self._reply(200, {"results": [DUMP_ROWS]})
            if url.path == "/db/query" or sql.upper().startswith("SELECT"):
                result = dict(ROWS, **({"time": 0.00125} if timed else {}))
                return self._reply(200, {"results": [result]})
        if url.path in ("/db/execute", "/db/request") and method == "POST":
            if "FAIL" in body[0]:
                return self._reply(503, text="leader not found\n")
            result: dict[str, Any] = {"last_insert_id": 3, "rows_affected": 2}
            if timed:
                result["time"] = 0.5
            return self._reply(200, {"results": [result]})
        if url.path == "/status":
            return self._reply(200, {"store": {"node_id": "1", "raft": {"state": "Leader", "term": 2}},
                                     "build": {"version": "v0"}})
        if url.path == "/nodes":
            return self._reply(200, {"nodes": [
                {"id": "1", "api_addr": "http://127.0.0.1:4001", "leader": True, "reachable": True},
                {"id": "2", "api_addr": "http://127.0.0.1:4003", "leader": False, "reachable": False,
                 "error": "timeout"}]})
        if url.path == "/leader":
            return self._reply(200, {"id": "1", "api_addr": "http://127.0.0.1:4001", "leader": True})
        if url.path == "/readyz":
            if self.server.ready:
                return self._reply(200, text="[+]node ok\n[+]leader ok\n[+]store ok\n")
            return self._reply(503, text="[+]node ok\n[+]leader does not exist\n")
        if url.path == "/remove" and method == "DELETE":
            return self._reply(200) if body == {"id": "2"} else self._reply(400, text="invalid node id")
        if url.path == "/leader" and method == "POST":
            return self._reply(200)
        if url.path == "/snapshot" and method == "POST":
            return self._reply(204 if query.get("trailing_logs") == ["5"] else 200)
        if url.path == "/debug/vars" and self.server.has_expvar:
            return self._reply(200, {"http": {"queries": 7}})
        return self._reply(404)


@pytest.fixture()
def fake() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRqlite)
    server.calls = []
    server.has_request = False
    server.has_expvar = True
    server.ready = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def shell(server: Any, script: str) -> subprocess.CompletedProcess[str]:
    host = f"127.0.0.1:{server.server_address[1]}"
    return subprocess.run([sys.executable, "-m", "zraft", "shell", "--host", host, "--timeout", "5"],
                          input=script, capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_select_prints_aligned_table(fake: Any) -> None:
    result = shell(fake, "SELECT * FROM foo\n")
    assert result.stdout == (
        "+----+---------+------+\n"
        "| id | name    | data |\n"
        "+----+---------+------+\n"
        "| 1  | fiona   |      |\n"
        "| 2  | o'brien | AQI= |\n"
        "+----+---------+------+\n")
    assert result.returncode == 0 and result.stderr == ""
    # /db/request missing (404) → fall back to /db/query at the default level
    paths = [(c[0], c[1]) for c in fake.calls]
    assert paths == [("POST", "/db/request"), ("POST", "/db/query")]
    assert fake.calls[1][2]["level"] == ["weak"] and fake.calls[1][3] == ["SELECT * FROM foo"]


def test_writes_go_to_execute_and_request_is_probed_once(fake: Any) -> None:
    result = shell(fake, "INSERT INTO foo(name) VALUES('x')\nUPDATE foo SET name='y'\npragma table_info(foo)\n")
    assert result.stdout.splitlines()[:2] == ["2 rows affected", "2 rows affected"]
    assert [c[1] for c in fake.calls] == ["/db/request", "/db/execute", "/db/execute", "/db/query"]
    assert "level" not in fake.calls[1][2]


def test_unified_endpoint_used_when_present(fake: Any) -> None:
    fake.has_request = True
    result = shell(fake, ".consistency strong\nSELECT 1\nDELETE FROM foo\n")
    assert "| id | name    | data |" in result.stdout and "2 rows affected" in result.stdout
    assert [c[1] for c in fake.calls] == ["/db/request", "/db/request"]
    assert fake.calls[0][2]["level"] == ["strong"]


def test_consistency_changes_level_parameter(fake: Any) -> None:
    result = shell(fake, ".consistency\nSELECT 1\n.consistency none\n.consistency\nSELECT 1\n"
                         ".consistency LINEARIZABLE\nSELECT 1\n.consistency bogus\n")
    lines = result.stdout.splitlines()
    assert lines[0] == "weak" and "none" in lines
    assert lines[-1].startswith("ERR! invalid consistency level \"bogus\"")
    levels = [c[2]["level"][0] for c in fake.calls if c[1] == "/db/query"]
    assert levels == ["weak", "none", "linearizable"]


def test_timer_adds_timings_and_prints_run_time(fake: Any) -> None:
    result = shell(fake, ".timer on\nSELECT 1\nINSERT INTO foo VALUES(1)\n.timer off\nSELECT 1\n")
    assert result.stdout.count("Run Time: ") == 2
    assert "Run Time: 0.001250 seconds" in result.stdout and "Run Time: 0.500000 seconds" in result.stdout
    timed = ["timings" in c[2] for c in fake.calls if c[1] != "/db/request"]
    assert timed == [True, True, False]


def test_errors_are_printed_not_raised(fake: Any) -> None:
    result = shell(fake, "SELECT * FROM nosuch\nSELECT stale\nINSERT FAIL\n.bogus\nSELECT 1\n")
    lines = result.stdout.splitlines()
    assert lines[0] == "ERR! no such table: nosuch"
    assert lines[1] == "ERR! stale read"
    assert lines[2] == "ERR! server responded with 503 Service Unavailable: leader not found"
    assert lines[3] == 'ERR! unknown command ".bogus", enter ".help" for usage hints'
    assert "| id | name    | data |" in result.stdout  # keeps going after errors
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 1


def test_unreachable_server_is_one_line() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "zraft", "shell", "--host", f"127.0.0.1:{port}"],
                            input="SELECT 1\n.status\n", capture_output=True, text=True, cwd=ROOT, timeout=30)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(l.startswith(f"ERR! cannot reach 127.0.0.1:{port}") for l in lines)
    assert "Traceback" not in result.stderr


def test_schema_dot_commands(fake: Any) -> None:
    result = shell(fake, ".tables\n.indexes\n.schema\n")
    assert result.stdout == (
        "+------+\n| name |\n+------+\n| foo  |\n+------+\n"
        "+----------+\n| name     |\n+----------+\n| foo_name |\n+----------+\n"
        "+-----------------------------------------------------------------+\n"
        "| sql                                                             |\n"
        "+-----------------------------------------------------------------+\n"
        "| CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT, data BLOB) |\n"
        "+-----------------------------------------------------------------+\n")
    assert all(c[1] == "/db/query" for c in fake.calls)  # dot-commands never probe /db/request
    assert all("_zraft_*" in c[3][0] for c in fake.calls)  # zraft's internal tables are hidden


def test_status_nodes_leader_expvar_ready(fake: Any) -> None:
    result = shell(fake, ".status\n.nodes\n.leader\n.expvar\n.ready\n")
    assert result.stdout == (
        "build:\n  version: v0\nstore:\n  node_id: 1\n  raft:\n    state: Leader\n    term: 2\n"
        "1:\n  api_addr: http://127.0.0.1:4001\n  id: 1\n  leader: true\n  reachable: true\n"
        "2:\n  api_addr: http://127.0.0.1:4003\n  error: timeout\n  id: 2\n  leader: false\n  reachable: false\n"
        "api_addr: http://127.0.0.1:4001\nid: 1\nleader: true\n"
        "http:\n  queries: 7\n"
        "[+]node ok\n[+]leader ok\n[+]store ok\n")
    nodes = next(c for c in fake.calls if c[1] == "/nodes")
    assert nodes[2] == {"ver": ["2"]}
    shell(fake, ".nodes all\n")
    assert "nonvoters" in [c for c in fake.calls if c[1] == "/nodes"][-1][2]


def test_snapshot_posts_to_the_node(fake: Any) -> None:
    result = shell(fake, ".snapshot\n.snapshot 5\n.snapshot x\n")
    assert result.stdout.splitlines() == ["snapshot taken: the log was compacted", "nothing to compact",
                                          "ERR! usage: .snapshot [TRAILING]"]
    posts = [c for c in fake.calls if c[1] == "/snapshot"]
    assert [(c[0], c[2]) for c in posts] == [("POST", {}), ("POST", {"trailing_logs": ["5"]})]


def test_remove_and_stepdown_as_in_rqlites_shell(fake: Any) -> None:
    result = shell(fake, ".remove 2\n.remove x\n.remove\n.stepdown\n.stepdown 3\n")
    assert result.stdout.splitlines() == [
        "node 2 removed", "ERR! server responded with 400 Bad Request: invalid node id", "ERR! usage: .remove NODEID",
        "leader stepped down", "leader stepped down: node 3 leads now"]
    calls = [(c[0], c[1], c[2], c[3]) for c in fake.calls if c[1] in ("/remove", "/leader")]
    assert calls == [("DELETE", "/remove", {}, {"id": "2"}), ("DELETE", "/remove", {}, {"id": "x"}),
                     ("POST", "/leader", {"wait": [""]}, None), ("POST", "/leader", {"wait": [""]}, {"id": "3"})]


def test_missing_endpoints_and_not_ready(fake: Any) -> None:
    fake.has_expvar = False
    fake.ready = False
    result = shell(fake, ".expvar\n.ready\n")
    assert result.stdout.splitlines() == [
        "ERR! this server has no /debug/vars endpoint (404 Not Found)",
        "ERR! server responded with 503 Service Unavailable: [+]node ok",
        "[+]leader does not exist"]


def test_dump_to_screen_and_file(fake: Any, tmp_path: Path) -> None:
    expected = (
        "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"
        "CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT, data BLOB);\n"
        "INSERT INTO \"foo\" VALUES(1,'fiona',NULL);\n"
        "INSERT INTO \"foo\" VALUES(2,'o''brien',X'0102');\n"
        "CREATE INDEX foo_name ON foo(name);\nCOMMIT;\n")
    result = shell(fake, ".dump\n")
    assert result.stdout == expected
    target = tmp_path / "dump.sql"
    result = shell(fake, f".dump {target}\n")
    assert result.stdout == f"SQL text file written successfully to {target}\n"
    assert target.read_text() == expected
    backup = [c for c in fake.calls if c[1] == "/db/backup"]
    assert backup and backup[0][2] == {"fmt": ["sql"]}  # tried the server's dump first
    assert all("blob_array" in c[2] for c in fake.calls if c[1] == "/db/query")


def test_help_and_quit(fake: Any) -> None:
    result = shell(fake, ".help\n.quit\nSELECT 1\n")
    assert ".consistency [none|weak|linearizable|strong]" in result.stdout
    for command in (".tables", ".schema", ".indexes", ".dump", ".nodes", ".status", ".expvar",
                    ".ready", ".timer", ".leader", ".exit", ".quit"):
        assert command in result.stdout
    assert fake.calls == []  # nothing after .quit was sent
    assert shell(fake, "exit\nSELECT 1\n").stdout == "" and fake.calls == []


def test_classification_and_table_format() -> None:
    for sql in ("SELECT 1", "  select 1", "-- c\nSELECT 1", "/* x */ (SELECT 1)", "PRAGMA table_info(t)",
                "EXPLAIN QUERY PLAN SELECT 1", "WITH x AS (SELECT 1) SELECT * FROM x", "VALUES (1)",
                "WITH x AS (SELECT 'insert') SELECT * FROM x"):
        assert is_query(sql), sql
    for sql in ("INSERT INTO t VALUES(1)", "CREATE TABLE t(x)", "PRAGMA foreign_keys=ON", "",
                "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "selectx"):
        assert not is_query(sql), sql
    assert format_table(["a"], []) == "+---+\n| a |\n+---+"
    assert format_table(["a", "b"], [[1.0, True], [2.5, None]]).splitlines()[3:5] == [
        "| 1   | true |", "| 2.5 |      |"]


def test_restore_and_boot_stream_the_file(fake: Any, tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + bytes(5000))
    dump = tmp_path / "x.sql"
    dump.write_text("CREATE TABLE t(a);\n")
    result = shell(fake, f".restore {db}\n.restore {dump}\n.boot {db}\n.boot {dump}\n.restore\n.restore /no/such\n")
    assert result.stdout.splitlines() == [
        "Database restored successfully.", "Database restored successfully.", "Node booted successfully.",
        f"ERR! {dump} is not a SQLite file", "ERR! usage: .restore FILE", "ERR! cannot read /no/such: no such file"]
    sent = [(c[1], c[3]) for c in fake.calls if c[1] in ("/db/load", "/boot")]
    assert sent == [("/db/load", db.read_bytes()), ("/db/load", dump.read_bytes()), ("/boot", db.read_bytes())]
