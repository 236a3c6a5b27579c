"""Bytes on the wire: encode a message into ZeroMQ frames and decode it back.

Frame 0 is an orjson header `{"v": version, "k": kind, ...fields}`; every `bytes` field and
every entry's data follow as frames of their own, in field order, so binary payloads are never
base64-inflated or copied into JSON. Decoding validates everything and raises
`RemoteProtocolError` on anything malformed: the receiving loop drops and counts it, and never
crashes on what a peer sent.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson

from zraft.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    SnapshotMeta,
)
from zraft.wire.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, REGISTRY, WireMessage

Frames = list[bytes]
MAX_HEADER_BYTES = 64 << 20


class RemoteProtocolError(Exception):
    """A frame set that is not a valid message of a version we speak."""


# == encoding =================================================================================
def encode(msg: WireMessage | Message) -> Frames:
    if isinstance(msg, Message):
        return _encode_raft(msg)
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "k": msg.KIND}
    blobs: Frames = []
    for f in fields(msg):  # type: ignore[arg-type]
        value = getattr(msg, f.name)
        if isinstance(value, bytes):
            header[f.name] = len(blobs)
            blobs.append(value)
        elif f.name == "entries":
            header[f.name] = _entries_header(value, blobs)
        elif f.type in ("list[bytes]", list[bytes]):
            header[f.name] = list(range(len(blobs), len(blobs) + len(value)))
            blobs.extend(value)
        else:
            header[f.name] = value
    return [orjson.dumps(header), *blobs]


def _entries_header(entries: list[Entry] | tuple[Entry, ...], blobs: Frames) -> list[list[int]]:
    out = []
    for entry in entries:
        out.append([entry.term, entry.index, int(entry.kind)])
        blobs.append(entry.data)
    return out


def _encode_raft(msg: Message) -> Frames:
    blobs: Frames = []
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION, "k": "raft", "t": int(msg.type), "to": msg.to, "frm": msg.frm,
        "term": msg.term, "lt": msg.log_term, "i": msg.index, "c": msg.commit,
        "r": msg.reject, "rh": msg.reject_hint, "x": msg.context,
        "e": _entries_header(msg.entries, blobs),
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
        raise RemoteProtocolError(f"unsupported protocol version {version!r}")
    kind = header.pop("k", None)
    blobs = frames[1:]
    try:
        if kind == "raft":
            return _decode_raft(header, blobs)
        cls = REGISTRY.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise RemoteProtocolError(f"unknown kind {kind!r}")
        return _decode_registered(cls, header, blobs)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RemoteProtocolError(f"malformed {kind!r}: {exc!r}") from None


def _decode_registered(cls: type[WireMessage], header: dict[str, Any], blobs: Frames) -> WireMessage:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in header:
            continue  # the dataclass default applies, or the constructor raises TypeError
        value = header.pop(f.name)
        if f.type in ("bytes", bytes):
            value = _blob(blobs, value)
        elif f.name == "entries":
            value = _decode_entries(value, blobs)
        elif f.type in ("list[bytes]", list[bytes]):
            if not isinstance(value, list):
                raise TypeError(f"field {f.name} must be a list of frame references")
            value = [_blob(blobs, position) for position in value]
        elif not _json_type_ok(f.type, value):
            raise TypeError(f"field {f.name} has the wrong type")
        kwargs[f.name] = value
    return cls(**kwargs)


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "str": (str,), "bool": (bool,),
}


def _json_type_ok(annotation: Any, value: Any) -> bool:
    expected = _SIMPLE_TYPES.get(str(annotation))
    if expected is None:
        if str(annotation).startswith("list"):
            return isinstance(value, list)
        if str(annotation).startswith("dict"):
            return isinstance(value, dict)
        return True
    if expected == (int,) and isinstance(value, bool):
        return False
    return isinstance(value, expected)


def _blob(blobs: Frames, position: Any) -> bytes:
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < len(blobs):
        raise ValueError(f"bad blob reference {position!r}")
    return bytes(blobs[position])


def _decode_entries(rows: Any, blobs: Frames) -> list[Entry]:
    if not isinstance(rows, list):
        raise TypeError("entries must be a list")
    if len(rows) > len(blobs):
        raise ValueError("fewer data frames than entries")
    entries = []
    for position, row in enumerate(rows):
        term, index, kind = row
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (term, index, kind)):
            raise ValueError("entry fields must be non-negative integers")
        entries.append(Entry(term, index, EntryKind(kind), bytes(blobs[position])))
    return entries


def _int(header: dict[str, Any], key: str) -> int:
    value = header[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def _decode_raft(header: dict[str, Any], blobs: Frames) -> Message:
    snapshot = None
    if header.get("s") is not None:
        index, term, voters, learners = header["s"]
        snapshot = SnapshotMeta(int(index), int(term), ConfState(tuple(voters), tuple(learners)))
    reject = header["r"]
    if not isinstance(reject, bool):
        raise TypeError("reject must be a boolean")
    return Message(
        type=MsgType(_int(header, "t")), to=_int(header, "to"), frm=_int(header, "frm"),
        term=_int(header, "term"), log_term=_int(header, "lt"), index=_int(header, "i"),
        entries=tuple(_decode_entries(header["e"], blobs)), commit=_int(header, "c"),
        reject=reject, reject_hint=_int(header, "rh"), context=_int(header, "x"),
        snapshot=snapshot,
    )
