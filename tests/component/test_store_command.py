"""The replicated command codec: round trips (BLOBs included) and refusals."""

from __future__ import annotations

import orjson
import pytest

from zraft.store.command import (
    Command,
    CommandError,
    LoadChunk,
    LoadCommit,
    Statement,
    UnsupportedCommandVersion,
    decode_command,
    encode_command,
    encode_load_step,
    new_load_id,
)


def test_round_trip_keeps_every_parameter_type() -> None:
    cmd = Command(
        [
            Statement("INSERT INTO t VALUES(?, ?, ?, ?, ?, ?)", [1, 2.5, "x", b"\x00\xff", True, None]),
            Statement("INSERT INTO t VALUES(:a, :b)", {"a": b"", "b": -(2**63)}),
            Statement("SELECT 1"),
            Statement("SELECT ?", []),
        ],
        transaction=True,
    )
    back = decode_command(encode_command(cmd))
    assert back == cmd
    assert isinstance(back.statements[0].params, list) and back.statements[0].params[4] is True


def test_wire_form_is_versioned_and_tags_blobs() -> None:
    doc = orjson.loads(encode_command(Command([Statement("S", [b"SQL"])])))
    assert doc == {"v": 1, "tx": False, "stmts": [{"sql": "S", "params": [{"b64": "U1FM"}]}]}


def test_unknown_version_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedCommandVersion, match="version 5"):
        decode_command(b'{"v": 5, "tx": false, "stmts": []}')


def test_read_only_command_is_version_2_and_plain_commands_stay_version_1() -> None:
    plain = encode_command(Command([Statement("SELECT 1")]))
    assert orjson.loads(plain) == {"v": 1, "tx": False, "stmts": [{"sql": "SELECT 1"}]}
    ro = encode_command(Command([Statement("SELECT 1")], read_only=True))
    assert orjson.loads(ro)["v"] == 2 and orjson.loads(ro)["ro"] is True
    assert decode_command(ro) == Command([Statement("SELECT 1")], False, True)
    assert decode_command(plain).read_only is False


@pytest.mark.parametrize("payload", [b'{"v": 2, "tx": false, "stmts": []}',
                                     b'{"v": 1, "ro": true, "tx": false, "stmts": []}',
                                     b'{"v": 2, "ro": 1, "tx": false, "stmts": []}'])
def test_read_only_flag_must_match_version(payload: bytes) -> None:
    with pytest.raises(CommandError):
        decode_command(payload)


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b'{"v":1}', b'{"v":1,"tx":0,"stmts":[]}', b'{"v":1,"tx":false,"stmts":[{"q":"x"}]}',
     b'{"v":1,"tx":false,"stmts":[{"sql":"x","params":[{"hex":"00"}]}]}',
     b'{"v":1,"tx":false,"stmts":[{"sql":"x","params":[{"b64":"!!"}]}]}',
     b'{"v":1,"tx":false,"stmts":[{"sql":"x","params":[[1]]}]}'],
)  # fmt: skip
def test_malformed_payloads_raise_command_error(payload: bytes) -> None:
    with pytest.raises(CommandError):
        decode_command(payload)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"nested": 1}, 2**64])
def test_values_json_cannot_carry_are_refused_at_encode(bad: object) -> None:
    with pytest.raises(CommandError):
        encode_command(Command([Statement("SELECT ?", [bad])]))  # type: ignore[list-item]


def test_load_steps_round_trip_as_version_4() -> None:
    load_id = new_load_id()
    chunk = LoadChunk(load_id, 7, b"\x00SQLite\xff")
    commit = LoadCommit(load_id, 8, 8 * 3, 0xFFFFFFFF)
    assert orjson.loads(encode_load_step(chunk))["v"] == 4
    assert decode_command(encode_load_step(chunk)) == chunk
    assert decode_command(encode_load_step(commit)) == commit


@pytest.mark.parametrize("doc", [
    {"load": "xyz", "seq": 0, "data": "AA=="},                       # id not 32 hex digits
    {"load": "0" * 32, "seq": -1, "data": "AA=="},                   # negative position
    {"load": "0" * 32, "seq": True, "data": "AA=="},                 # a bool is not a position
    {"load": "0" * 32, "seq": 0, "data": "!!"},                      # not base64
    {"load": "0" * 32, "seq": 0, "data": ""},                        # empty chunk
    {"load": "0" * 32, "chunks": 0, "size": 0, "crc": 0},            # nothing to commit
    {"load": "0" * 32, "chunks": 1, "size": 5 << 20, "crc": 0},      # more than one chunk can hold
    {"load": "0" * 32, "chunks": 1, "size": 1, "crc": 1 << 32},      # not a CRC-32
])  # fmt: skip
def test_malformed_load_steps_are_command_errors(doc: dict[str, object]) -> None:
    with pytest.raises(CommandError):
        decode_command(orjson.dumps({"v": 4, **doc}))


def test_an_out_of_range_load_step_is_refused_at_encode() -> None:
    with pytest.raises(CommandError):
        encode_load_step(LoadChunk(new_load_id(), 0, b""))
