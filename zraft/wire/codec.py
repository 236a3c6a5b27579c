"""Bytes on the wire: encode a message into ZeroMQ frames and decode it back.

Frame 0 is an orjson header `{"v": version, "k": kind, ...fields}`; every `bytes` field and
every entry's data follow as frames of their own, in field order, so binary payloads are never
base64-inflated or copied into JSON.

Decoding validates every field against its declared type (zraft.wire.schema compiles each
message class once) and raises `RemoteProtocolError` on anything malformed: the receiving
loop drops and counts it, or answers it with a bad_request error when the request's id could
be read, and never crashes on what a peer sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from zraft.raft.types import (
    ConfState,
    Message,
    MsgType,
    SnapshotMeta,
)
from zraft.wire.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, REGISTRY, WireMessage
from zraft.wire.schema import Frames, decode_entries, encode_entries, schema_of

MAX_HEADER_BYTES = 64 << 20


class RemoteProtocolError(Exception):
    """A frame set that is not a valid message of a version we speak. `request_id` is the
    header's `id` when it was a readable integer, so that a server can answer the sender with
    a clear error instead of leaving it to time out."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


# == encoding =================================================================================
def encode(msg: WireMessage | Message) -> Frames:
    if isinstance(msg, Message):
        return _encode_raft(msg)
    blobs: Frames = []
    header = schema_of(type(msg)).encode(msg, blobs)
    return [orjson.dumps(header), *blobs]


def _encode_raft(msg: Message) -> Frames:
    blobs: Frames = []
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION, "k": "raft", "t": int(msg.type), "to": msg.to, "frm": msg.frm,
        "term": msg.term, "lt": msg.log_term, "i": msg.index, "c": msg.commit,
        "r": msg.reject, "rh": msg.reject_hint, "x": msg.context,
        "e": encode_entries(msg.entries, blobs),
    }
    if msg.snapshot is not None:
        snap = msg.snapshot
        header["s"] = [snap.index, snap.term, list(snap.conf.voters), list(snap.conf.learners)]
    return [orjson.dumps(header), *blobs]


# == decoding =================================================================================
def decode(frames: Frames) -> WireMessage | Message:
    """Decode frames into a message, or raise RemoteProtocolError."""
    if not frames:
        raise RemoteProtocolError("no frames")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise RemoteProtocolError("header too large")
    try:
        header = orjson.loads(frames[0])
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RemoteProtocolError("header is not an object")
    version = header.pop("v", None)
    if not isinstance(version, int) or not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise RemoteProtocolError(f"unsupported protocol version {version!r}", _request_id(header))
    kind = header.pop("k", None)
    blobs = frames[1:]
    try:
        if kind == "raft":
            return _decode_raft(header, blobs)
        cls = REGISTRY.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise RemoteProtocolError(f"unknown kind {kind!r}", _request_id(header))
        return schema_of(cls).decode(header, blobs)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RemoteProtocolError(f"malformed {kind!r}: {exc}", _request_id(header)) from None


def _request_id(header: dict[str, Any]) -> int | None:
    value = header.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(header: dict[str, Any], key: str) -> int:
    value = header[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def _decode_raft(header: dict[str, Any], blobs: Frames) -> Message:
    snapshot = None
    if header.get("s") is not None:
        index, term, voters, learners = header["s"]
        if not all(type(v) is int for v in (index, term, *voters, *learners)):
            raise ValueError("snapshot fields must be integers")
        snapshot = SnapshotMeta(index, term, ConfState(tuple(voters), tuple(learners)))
    reject = header["r"]
    if not isinstance(reject, bool):
        raise TypeError("reject must be a boolean")
    if len(blobs) != len(header["e"]):
        raise ValueError(f"{len(blobs)} data frames for {len(header['e'])} entries")
    return Message(
        type=MsgType(_int(header, "t")), to=_int(header, "to"), frm=_int(header, "frm"),
        term=_int(header, "term"), log_term=_int(header, "lt"), index=_int(header, "i"),
        entries=tuple(decode_entries(header["e"], blobs)), commit=_int(header, "c"),
        reject=reject, reject_hint=_int(header, "rh"), context=_int(header, "x"),
        snapshot=snapshot,
    )
