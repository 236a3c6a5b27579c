"""How the chaos clients turn HTTP answers into ok / fail / info.

Calling something `fail` that did happen would hide a bug from the checker, so each rule
is pinned here against a canned server."""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zraft.chaos.history import HistoryWriter, read_events
from zraft.chaos.runner import perform
from zraft.chaos.workloads import (
    BankWorkload,
    Indeterminate,
    NodeClient,
    OpPlan,
    Refused,
    RegisterWorkload,
    SetWorkload,
)


class Canned:
    """The next answer the fake node gives: (status, JSON body) or None to hang up."""

    answer: tuple[int, object] | None = (200, {"results": [{}]})
    requests: list[tuple[str, object]] = []


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Canned.requests.append((self.path, json.loads(body)))
        if Canned.answer is None:
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        status, doc = Canned.answer
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def client() -> Iterator[NodeClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Canned.requests = []
    node = NodeClient(f"127.0.0.1:{server.server_address[1]}", timeout_s=2.0)
    yield node
    node.close()
    server.shutdown()
    server.server_close()


def answer(status: int, doc: object) -> None:
    Canned.answer = (status, doc)


def test_write_acknowledged_is_ok(client):
    answer(200, {"results": [{"last_insert_id": 1, "rows_affected": 1}]})
    assert RegisterWorkload().perform(client, OpPlan("write", "r0", 7)) == 7
    path, body = Canned.requests[-1]
    assert path.startswith("/db/execute?") and body[0][1:] == ["r0", 7]


def test_sql_error_inside_200_is_refused(client):
    answer(200, {"results": [{"error": "UNIQUE constraint failed"}]})
    with pytest.raises(Refused):
        SetWorkload().perform(client, OpPlan("add", None, 3))


def test_request_level_error_is_indeterminate(client):
    answer(200, {"results": [], "error": "timeout"})
    with pytest.raises(Indeterminate):
        RegisterWorkload().perform(client, OpPlan("write", "r0", 7))


@pytest.mark.parametrize("status", [500, 503, 301])
def test_non_200_is_indeterminate(client, status):
    answer(status, {"results": [], "error": "leader not found"})
    with pytest.raises(Indeterminate):
        RegisterWorkload().perform(client, OpPlan("write", "r0", 7))


def test_bad_request_is_refused(client):
    answer(400, {"results": [], "error": "bad"})
    with pytest.raises(Refused):
        RegisterWorkload().perform(client, OpPlan("write", "r0", 7))


def test_hang_up_is_indeterminate(client):
    Canned.answer = None
    with pytest.raises(Indeterminate):
        RegisterWorkload().perform(client, OpPlan("write", "r0", 7))


def test_connection_refused_is_refused():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Refused):
        RegisterWorkload().perform(NodeClient(f"127.0.0.1:{port}"), OpPlan("write", "r0", 7))


def test_cas_that_matches_nothing_is_refused(client):
    answer(200, {"results": [{"rows_affected": 0}]})
    with pytest.raises(Refused):
        RegisterWorkload().perform(client, OpPlan("cas", "r0", [1, 2]))
    answer(200, {"results": [{"rows_affected": 1}]})
    assert RegisterWorkload().perform(client, OpPlan("cas", "r0", [1, 2])) == [1, 2]


def test_read_returns_value_or_null(client):
    answer(200, {"results": [{"columns": ["v"], "types": ["integer"], "values": [[42]]}]})
    assert RegisterWorkload().perform(client, OpPlan("read", "r0", None, "strong")) == 42
    assert "level=strong" in Canned.requests[-1][0]
    answer(200, {"results": [{"columns": ["v"], "types": ["integer"]}]})
    assert RegisterWorkload().perform(client, OpPlan("read", "r0", None, "linearizable")) is None


def test_bank_transfer_is_one_transaction(client):
    answer(200, {"results": [{"rows_affected": 1}, {"rows_affected": 1}]})
    op = OpPlan("transfer", None, {"from": 0, "to": 1, "amount": 5})
    BankWorkload().perform(client, op)
    path, body = Canned.requests[-1]
    assert "transaction=true" in path and len(body) == 2
    answer(200, {"results": [{"rows_affected": 1}, {"error": "CHECK constraint failed"}]})
    with pytest.raises(Refused):
        BankWorkload().perform(client, op)


def test_register_keys_are_retired_after_their_budget():
    workload = RegisterWorkload(keys_live=2, ops_per_key=5)
    rng = random.Random(1)
    keys = [workload.plan(rng).key for _ in range(40)]
    assert set(keys[:10]) <= {"r0", "r1"}
    assert set(keys[10:20]) <= {"r2", "r3"}
    values = [workload.plan(rng).value for _ in range(50)]
    written = [v for v in values if isinstance(v, int)]
    assert len(written) == len(set(written)), "write values must be unique"


def test_perform_records_both_ends(client, tmp_path):
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as history:
        answer(503, {"results": [], "error": "leader not found"})
        assert perform(RegisterWorkload(), client, OpPlan("write", "r0", 1), history, 0) == "info"
        answer(200, {"results": [{"rows_affected": 0}]})
        assert perform(RegisterWorkload(), client, OpPlan("cas", "r0", [1, 2]), history, 1) == "fail"
        answer(200, {"results": [{"columns": ["v"], "types": ["integer"], "values": [[1]]}]})
        assert perform(RegisterWorkload(), client, OpPlan("read", "r0", None, "strong"), history, 2) == "ok"
    events = read_events(path)
    assert [(e.process, e.type) for e in events] == [(0, "invoke"), (0, "info"), (1, "invoke"), (1, "fail"),
                                                    (2, "invoke"), (2, "ok")]
    assert events[-1].value == 1
