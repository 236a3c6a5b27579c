"""The wire codec: golden encodings per kind, round trips, and rejection of malformed frames.

Golden files pin the exact bytes of every message kind at PROTOCOL_VERSION; a change to any of
them is a wire-format change that must be deliberate. Regenerate with
`ZRAFT_REWRITE_GOLDEN=1 python -m pytest tests/unit/wire` and review the diff.
"""

from __future__ import annotations

import base64
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
import pytest

from zraft.raft.types import ConfState, Entry, EntryKind, Message, MsgType, SnapshotMeta
from zraft.wire import PROTOCOL_VERSION, REGISTRY, RemoteProtocolError, decode, encode
from zraft.wire.messages import (
    Appended,
    AppliedRow,
    BatchedWait,
    ClientOptions,
    ErrorCode,
    FailedRow,
    PeerProgress,
    QueryOptions,
    Refused,
    RenderOptions,
)
from zraft.wire.sql import Statement

GOLDEN = Path(__file__).parent / "golden"
REWRITE = os.environ.get("ZRAFT_REWRITE_GOLDEN") == "1"

SAMPLE_VALUES: dict[str, Any] = {
    "id": 7, "data": b"\x00\x01binary\xff", "index": 42, "term": 3, "status": {"role": "leader"},
    "start": 5, "max_bytes": 1024, "commit": 9, "op": "add_voter", "node_id": 2, "result": [{"x": 1}],
    "code": ErrorCode.NOT_LEADER, "message": "not the leader", "leader": 2, "timeout_ms": 500,
    "statements": [Statement("INSERT INTO t VALUES(?)", [1])], "min_applied": 4,
    "results": [{"rows_affected": 1}], "applied": 4, "transaction": True, "level": "linearizable",
    "raft_index": 12, "epoch": 99, "seq": 1000, "wait_ms": 250, "linger_ms": 5, "disk_full": "disk full: /x",
    "rows": [AppliedRow(7, 42, [{"rows_affected": 1}]), FailedRow(8, ErrorCode.LEADERSHIP_LOST, "replaced", 0)],
    "payloads": [b"\x00first", b"second\xff"],
    "requests": [BatchedWait(7, 42, 3, 500, RenderOptions(associative=True)), BatchedWait(8, 43, 3, 500)],
    "entries": [Entry(3, 41, EntryKind.NORMAL, b"cmd"), Entry(3, 42, EntryKind.CONF, b"v=1,2;l=")],
    "role": "leader", "vote": 1, "raft_commit": 10, "first_index": 1, "last_index": 11, "voters": [1, 2, 3],
    "learners": [4], "pending_reads": 2, "vote_floor": [0, 0], "stats": {"syncs": 5},
    "progress": {"2": PeerProgress(9, 10, "replicate")}, "snapshot_index": 6, "snapshot_term": 2,
    "log_bytes": 4096, "known_commit": 9, "lag_ms": None,
    "db_path": "/data/db.sqlite", "parked": 1, "frm": 2, "to": 1, "session": 77, "offset": 1024, "size": 4096,
    "received": 2048, "installed": 40, "durable": 40, "trailing": 10, "changed": True,
    "wait": True, "forwarded": True, "removed_by": 2,
}
SAMPLE_OVERRIDES: dict[tuple[str, str], Any] = {
    ("proposed_batch", "results"): [Appended(41, 3), Refused(ErrorCode.NOT_LEADER, "not the leader", 2)],
    ("ok", "result"): "transfer requested",
    ("wait_applied", "options"): RenderOptions(associative=True),
    ("query", "options"): QueryOptions(associative=True),
    ("client_execute", "options"): ClientOptions(associative=True),
    ("client_query", "options"): ClientOptions(associative=True),
}


def sample(kind: str) -> Any:
    cls = REGISTRY[kind]
    return cls(**{f.name: SAMPLE_OVERRIDES.get((kind, f.name), SAMPLE_VALUES.get(f.name))  # type: ignore[arg-type]
                  for f in fields(cls)})


RAFT_SAMPLE = Message(MsgType.APP, to=2, frm=1, term=5, log_term=4, index=10,
                      entries=(Entry(5, 11, EntryKind.NORMAL, b"\x00a"),), commit=9,
                      reject=False, reject_hint=0, context=3,
                      snapshot=SnapshotMeta(8, 4, ConfState((1, 2, 3), (4,))))


def frames_to_json(frames: list[bytes]) -> bytes:
    return orjson.dumps([base64.b64encode(f).decode() for f in frames], option=orjson.OPT_INDENT_2)


@pytest.mark.parametrize("kind", sorted([*REGISTRY, "raft"]))
def test_golden_encoding(kind: str) -> None:
    msg = RAFT_SAMPLE if kind == "raft" else sample(kind)
    frames = encode(msg)
    path = GOLDEN / f"{kind}.v{PROTOCOL_VERSION}.json"
    if REWRITE or not path.exists():
        assert REWRITE or not os.environ.get("CI"), f"missing golden file {path.name}"
        path.write_bytes(frames_to_json(frames))
    assert frames_to_json(frames) == path.read_bytes(), f"wire format of {kind!r} changed"
    assert decode(frames) == msg


def test_every_registered_kind_has_a_golden_file() -> None:
    names = {p.name for p in GOLDEN.glob("*.json")}
    for kind in [*REGISTRY, "raft"]:
        assert f"{kind}.v{PROTOCOL_VERSION}.json" in names


@pytest.mark.parametrize("frames, reason", [
    ([], "no frames"),
    ([b"{"], "not JSON"),
    ([b"[1]"], "not an object"),
    ([b'{"k":"ok","id":1}'], "version"),
    ([b'{"v":99,"k":"ok","id":1}'], "version"),
    ([b'{"v":1,"k":"nope"}'], "unknown kind"),
    ([b'{"v":1,"k":"propose","id":1,"data":4}', b"x"], "blob"),
    ([b'{"v":1,"k":"propose","id":"1","data":0}', b"x"], "wrong type"),
    ([b'{"v":1,"k":"propose","id":true,"data":0}', b"x"], "wrong type"),
    ([b'{"v":1,"k":"propose"}'], "missing"),
    ([b'{"v":1,"k":"raft","t":99,"to":1,"frm":2,"term":1,"lt":0,"i":0,"c":0,"r":false,"rh":0,"x":0,"e":[]}'], "raft"),
    ([b'{"v":1,"k":"raft","t":1,"to":-1,"frm":2,"term":1,"lt":0,"i":0,"c":0,"r":false,"rh":0,"x":0,"e":[]}'], "raft"),
    ([b'{"v":1,"k":"raft","t":1,"to":1,"frm":2,"term":1,"lt":0,"i":0,"c":0,"r":false,"rh":0,"x":0,"e":[[1,1,0]]}'], "raft"),
    ([b'{"v":1,"k":"entries","id":1,"commit":1,"entries":[[1,"a",0]]}', b"x"], "entries"),
])
def test_malformed_frames_are_rejected(frames: list[bytes], reason: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(frames)


def test_binary_payloads_travel_in_their_own_frames() -> None:
    payload = bytes(range(256)) * 100
    frames = encode(sample("propose").__class__(id=1, data=payload))
    assert payload not in frames[0] and frames[1] == payload


# == typed fields: validated on decode, so no receiver checks shapes by hand ==================
def header(kind: str, **fields: Any) -> list[bytes]:
    return [orjson.dumps({"v": 1, "k": kind, "id": 1, **fields})]


@pytest.mark.parametrize("frames", [
    header("wait_applied_batch", requests=[[7, "42", 3, 500, {}]]),          # a row item of the wrong type
    header("wait_applied_batch", requests=[[7, 42, 3]]),                      # a row too short
    header("wait_applied_batch", requests=[[7, 42, 3, 500, {}, 9]]),          # ... or too long
    header("wait_applied_batch", requests=[[7, 42, 3, 500, {"associative": 1}]]),  # a record field's type
    header("proposed_batch", results=[[1, "2"]]),                             # neither row of the union
    header("applied_result_batch", rows=[[1, 2]]),
    header("query", statements=[["SELECT ?", [{"b64": "!!"}]]]),              # bad base64
    header("query", statements=[["SELECT ?", [{"hex": "00"}]]]),              # an object that is no BLOB
    header("query", statements=[["SELECT 1", None, None]]),                   # not [sql, params]
    header("query", statements=[[5, None]]),
    header("query", statements=["SELECT 1"], options=[]),                     # a record that is no object
    header("store_status", applied=1, known_commit=1, lag_ms="1", db_path="", parked=0, disk_full=""),
    header("raft_status", node_id=1),                                         # required fields missing
    header("client_results", results={"a": 1}),                              # a list field given an object
])
def test_typed_fields_are_validated_on_decode(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(frames)


def test_rows_records_and_enums_decode_to_their_types() -> None:
    batch = decode(header("proposed_batch", results=[[5, 2], ["not_leader", "no", 3], ["busy", "full"]]))
    assert batch.results == [Appended(5, 2), Refused(ErrorCode.NOT_LEADER, "no", 3),  # type: ignore[union-attr]
                             Refused(ErrorCode.BUSY, "full", 0)]
    query = decode(header("query", statements=[["SELECT ?", [{"b64": "AAE="}, 1.5, None]], "SELECT 2"],
                          options={"qualify_columns": True, "from_the_future": 1}))
    assert query.statements == [Statement("SELECT ?", [b"\x00\x01", 1.5, None]),  # type: ignore[union-attr]
                                Statement("SELECT 2")]
    assert query.options == QueryOptions(qualify_columns=True)  # type: ignore[union-attr]
    error = decode(header("error", code="a_code_from_a_newer_build", message="what failed"))
    assert error.code is ErrorCode.INTERNAL and error.message == "what failed"  # type: ignore[union-attr]


def test_records_leave_out_fields_at_their_default() -> None:
    frames = encode(sample("wait_applied").__class__(id=1, index=2, term=3, options=RenderOptions()))
    assert b'"options":{}' in frames[0]
    frames = encode(sample("client_query").__class__(id=1, statements=[], options=ClientOptions(forwarded=True)))
    assert b'"options":{"forwarded":true}' in frames[0]


def test_an_older_sender_without_new_fields_still_decodes() -> None:
    fetch = decode(header("fetch", start=3))
    assert (fetch.start, fetch.wait_ms, fetch.disk_full) == (3, 0, "")  # type: ignore[union-attr]
