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

GOLDEN = Path(__file__).parent / "golden"
REWRITE = os.environ.get("ZRAFT_REWRITE_GOLDEN") == "1"

SAMPLE_VALUES: dict[str, Any] = {
    "id": 7, "data": b"\x00\x01binary\xff", "index": 42, "term": 3, "status": {"role": "leader"},
    "start": 5, "max_bytes": 1024, "commit": 9, "op": "add_voter", "node_id": 2, "result": [{"x": 1}],
    "code": "not_leader", "message": "not the leader", "leader": 2, "timeout_ms": 500,
    "statements": [["INSERT INTO t VALUES(?)", [1]]], "min_applied": 4, "options": {"associative": True},
    "results": [{"rows_affected": 1}], "applied": 4, "transaction": True, "level": "linearizable",
    "raft_index": 12, "epoch": 99, "seq": 1000, "wait_ms": 250, "linger_ms": 5, "disk_full": "disk full: /x",
    "rows": [[7, 42, [{"rows_affected": 1}]], [8, "leadership_lost", "replaced", 0]],
    "payloads": [b"\x00first", b"second\xff"],
    "requests": [[7, 42, 3, 500, {"associative": True}], [8, 43, 3, 500, {}]],
    "entries": [Entry(3, 41, EntryKind.NORMAL, b"cmd"), Entry(3, 42, EntryKind.CONF, b"v=1,2;l=")],
}


def sample(kind: str) -> Any:
    cls = REGISTRY[kind]
    return cls(**{f.name: SAMPLE_VALUES[f.name] for f in fields(cls)})  # type: ignore[arg-type]


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
