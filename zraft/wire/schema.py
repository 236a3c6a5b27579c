"""Each message class's field types, compiled once into an encoder and a validating decoder.

The types a message field may have, and how each travels in the JSON header:

| type | header form | checked on decode |
|---|---|---|
| `int`, `str`, `bool`, `float` | the value | exact type (`bool` is not an `int`) |
| `X | None` | the value or null | |
| a `StrEnum` | its string | a member (see the enum's `_missing_`) |
| `bytes` | position of its frame | a frame exists there |
| `list[bytes]` | positions of their frames | |
| `list[Entry]` | `[[term, index, kind], ...]`, data in frames 0.. | non-negative integers, known kind |
| `list[X]`, `dict[str, X]` | array, object | every item |
| a `Row` | array of its fields in order | arity and every field |
| `A | B` of Rows | either array | the first alternative that fits |
| a `Record` | object without fields at their default | every known key; unknown keys ignored |
| `Statement` | `[sql, params]`, BLOBs as `{"b64": ...}` | zraft.wire.sql |
| `JsonValue`, `JsonObject` | free JSON (client data only) | an object, for JsonObject |

Anything else is refused when the class is compiled, so a field of an unsupported type fails
the first test that encodes it, not a production decode.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields, is_dataclass
from enum import StrEnum
from typing import Any, Union

from zraft.raft.types import Entry, EntryKind
from zraft.wire.messages import PROTOCOL_VERSION, Record, Row, WireMessage
from zraft.wire.sql import Statement, statement_from_pair, statement_to_pair

Frames = list[bytes]
Encoder = Callable[[Any, Frames], Any]
Decoder = Callable[[Any, Frames], Any]


class _Json:
    """Stands for messages.JsonValue while field types are resolved."""


class _JsonObject:
    """Stands for messages.JsonObject while field types are resolved."""


_NAMESPACE: dict[str, Any] = {**vars(sys.modules[WireMessage.__module__]), "JsonValue": _Json,
                               "JsonObject": _JsonObject}


class MessageSchema:
    """How one WireMessage class is encoded into a header and decoded from one."""

    def __init__(self, cls: type[WireMessage]) -> None:
        self.cls = cls
        self.kind = cls.KIND
        self.fields = _compile_fields(cls)
        hints = typing.get_type_hints(cls, globalns=_NAMESPACE)
        self._frame_fields = [(f.name, hints[f.name] is bytes) for f in fields(cls)  # type: ignore[arg-type]
                              if hints[f.name] in (bytes, list[bytes], list[Entry])]
        if any(f[0] == "entries" for f in self.fields) and len(self._frame_fields) > 1:
            raise TypeError(f"{cls.__name__}: entries must be the only frame-carrying field")

    def encode(self, msg: WireMessage, blobs: Frames) -> dict[str, Any]:
        header: dict[str, Any] = {"v": PROTOCOL_VERSION, "k": self.kind}
        for name, encoder, _decoder, _required in self.fields:
            header[name] = encoder(getattr(msg, name), blobs)
        return header

    def decode(self, header: dict[str, Any], blobs: Frames) -> WireMessage:
        kwargs: dict[str, Any] = {}
        for name, _encoder, decoder, required in self.fields:
            if name in header:
                try:
                    kwargs[name] = decoder(header[name], blobs)
                except (TypeError, ValueError, KeyError, IndexError) as exc:
                    raise ValueError(f"field {name}: {exc}") from None
            elif required:
                raise TypeError(f"field {name} is missing")
        used = sum(1 if single else len(kwargs.get(name, ())) for name, single in self._frame_fields
                   if name in kwargs)
        if used != len(blobs):
            raise ValueError(f"{len(blobs)} data frames for {used} references")
        return self.cls(**kwargs)


_SCHEMAS: dict[type[WireMessage], MessageSchema] = {}


def schema_of(cls: type[WireMessage]) -> MessageSchema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = MessageSchema(cls)
    return schema


# == fields ===================================================================================
def _compile_fields(cls: type) -> list[tuple[str, Encoder, Decoder, bool]]:
    hints = typing.get_type_hints(cls, globalns=_NAMESPACE)
    out = []
    for f in fields(cls):
        encoder, decoder = _converters(hints[f.name], f"{cls.__name__}.{f.name}")
        required = f.default is MISSING and f.default_factory is MISSING
        out.append((f.name, encoder, decoder, required))
    return out


def _converters(hint: Any, where: str) -> tuple[Encoder, Decoder]:
    simple = _SIMPLE.get(hint)
    if simple is not None:
        return _same, simple
    if hint is bytes:
        return _encode_blob, _decode_blob
    if hint == list[bytes]:
        return _encode_blobs, _decode_blobs
    if hint == list[Entry]:
        return encode_entries, decode_entries
    if hint is Statement:
        return _encode_statement, _decode_statement
    if hint is _Json:
        return _same, _same
    if hint is _JsonObject:
        return _same, _json_object
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return _same, _enum_decoder(hint)
    if isinstance(hint, type) and issubclass(hint, Row) and is_dataclass(hint):
        return _row_converters(hint)
    if isinstance(hint, type) and issubclass(hint, Record) and is_dataclass(hint):
        return _record_converters(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return _list_converters(*_converters(args[0], where))
    if origin is dict and args[0] is str:
        return _dict_converters(*_converters(args[1], where))
    if origin in (Union, types.UnionType):
        return _union_converters(args, where)
    raise TypeError(f"{where}: the wire cannot carry a field of type {hint!r}")


def _same(value: Any, blobs: Frames) -> Any:
    return value


def _exact(kind: type) -> Decoder:
    def decode(raw: Any, blobs: Frames) -> Any:
        if type(raw) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(raw).__name__}")
        return raw
    return decode


def _decode_float(raw: Any, blobs: Frames) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError(f"expected a number, got {type(raw).__name__}")
    return float(raw)


_SIMPLE: dict[Any, Decoder] = {int: _exact(int), str: _exact(str), bool: _exact(bool), float: _decode_float}
_EXACT: dict[Decoder, type] = {_SIMPLE[int]: int, _SIMPLE[str]: str, _SIMPLE[bool]: bool}
"""Decoders that only check an exact type, which rows inline."""


def _json_object(raw: Any, blobs: Frames) -> Any:
    if not isinstance(raw, dict):
        raise TypeError("expected an object")
    return raw


def _enum_decoder(enum: type[StrEnum]) -> Decoder:
    def decode(raw: Any, blobs: Frames) -> Any:
        if not isinstance(raw, str):
            raise TypeError(f"expected a {enum.__name__} string")
        return enum(raw)
    return decode


def _encode_blob(value: bytes, blobs: Frames) -> int:
    blobs.append(value)
    return len(blobs) - 1


def _decode_blob(position: Any, blobs: Frames) -> bytes:
    if type(position) is not int or not 0 <= position < len(blobs):
        raise ValueError(f"bad frame reference {position!r}")
    return bytes(blobs[position])


def _encode_blobs(values: list[bytes], blobs: Frames) -> list[int]:
    start = len(blobs)
    blobs.extend(values)
    return list(range(start, len(blobs)))


def _decode_blobs(positions: Any, blobs: Frames) -> list[bytes]:
    if not isinstance(positions, list):
        raise TypeError("expected a list of frame references")
    return [_decode_blob(p, blobs) for p in positions]


def encode_entries(entries: Sequence[Entry], blobs: Frames) -> list[list[int]]:
    """Entries as [term, index, kind] rows; their data go to frames, in order."""
    out = []
    for entry in entries:
        out.append([entry.term, entry.index, int(entry.kind)])
        blobs.append(entry.data)
    return out


def decode_entries(rows: Any, blobs: Frames) -> list[Entry]:
    """Entries from their rows and frames 0.. (see encode_entries)."""
    if not isinstance(rows, list):
        raise TypeError("entries must be a list")
    if len(rows) > len(blobs):
        raise ValueError("fewer data frames than entries")
    entries = []
    for position, row in enumerate(rows):
        term, index, kind = row
        if not all(type(v) is int and v >= 0 for v in (term, index, kind)):
            raise ValueError("entry fields must be non-negative integers")
        entries.append(Entry(term, index, EntryKind(kind), bytes(blobs[position])))
    return entries


def _encode_statement(value: Statement, blobs: Frames) -> list[Any]:
    return statement_to_pair(value)


def _decode_statement(raw: Any, blobs: Frames) -> Statement:
    return statement_from_pair(raw)


def _list_converters(item_encoder: Encoder, item_decoder: Decoder) -> tuple[Encoder, Decoder]:
    if item_encoder is _same:
        def encode(values: list[Any], blobs: Frames) -> Any:
            return values
    else:
        def encode(values: list[Any], blobs: Frames) -> Any:
            return [item_encoder(v, blobs) for v in values]

    def decode(raw: Any, blobs: Frames) -> list[Any]:
        if not isinstance(raw, list):
            raise TypeError("expected a list")
        if item_decoder is _same:
            return raw
        return [item_decoder(v, blobs) for v in raw]
    return encode, decode


def _dict_converters(value_encoder: Encoder, value_decoder: Decoder) -> tuple[Encoder, Decoder]:
    def encode(values: dict[str, Any], blobs: Frames) -> Any:
        return {k: value_encoder(v, blobs) for k, v in values.items()}

    def decode(raw: Any, blobs: Frames) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise TypeError("expected an object")
        return {k: value_decoder(v, blobs) for k, v in raw.items()}
    return encode, decode


def _union_converters(args: tuple[Any, ...], where: str) -> tuple[Encoder, Decoder]:
    options = [a for a in args if a is not type(None)]
    if len(options) < len(args) and len(options) == 1:  # X | None
        inner_encoder, inner_decoder = _converters(options[0], where)

        def encode_optional(value: Any, blobs: Frames) -> Any:
            return None if value is None else inner_encoder(value, blobs)

        def decode_optional(raw: Any, blobs: Frames) -> Any:
            return None if raw is None else inner_decoder(raw, blobs)
        return encode_optional, decode_optional
    if len(options) == len(args) and all(isinstance(a, type) and issubclass(a, Row) for a in args):
        return _row_union(args, where)
    raise TypeError(f"{where}: only X | None and unions of Rows can travel, not {args!r}")


def _row_union(rows: tuple[type, ...], where: str) -> tuple[Encoder, Decoder]:
    by_class = {cls: _row_converters(cls) for cls in rows}

    def encode(value: Any, blobs: Frames) -> Any:
        return by_class[type(value)][0](value, blobs)

    def decode(raw: Any, blobs: Frames) -> Any:
        for _encode, decoder in by_class.values():
            try:
                return decoder(raw, blobs)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"a row that is none of {', '.join(c.__name__ for c in rows)}")
    return encode, decode


def _row_converters(cls: type) -> tuple[Encoder, Decoder]:
    compiled = _compile_fields(cls)
    names = [name for name, _e, _d, _r in compiled]
    least = sum(1 for _n, _e, _d, required in compiled if required)
    encoders = [encoder for _n, encoder, _d, _r in compiled]
    decoders = [decoder for _n, _e, decoder, _r in compiled]
    exact = [_EXACT.get(decoder) for decoder in decoders]
    plain = all(encoder is _same for encoder in encoders)

    def encode(value: Any, blobs: Frames) -> list[Any]:
        if plain:
            return [getattr(value, name) for name in names]
        return [encoder(getattr(value, name), blobs) for name, encoder in zip(names, encoders)]

    def decode(raw: Any, blobs: Frames) -> Any:
        if type(raw) is not list or not least <= len(raw) <= len(compiled):
            raise ValueError(f"a {cls.__name__} row has {least} to {len(compiled)} items")
        items = []
        for item, kind, decoder in zip(raw, exact, decoders):
            if kind is None:
                items.append(decoder(item, blobs))
            elif type(item) is kind:
                items.append(item)
            else:
                raise TypeError(f"a {cls.__name__} row item is {type(item).__name__}, not {kind.__name__}")
        return cls(*items)
    return encode, decode


def _record_converters(cls: type) -> tuple[Encoder, Decoder]:
    compiled = _compile_fields(cls)
    defaults = {f.name: f.default for f in fields(cls)}
    everything_default = cls()

    def encode(value: Any, blobs: Frames) -> dict[str, Any]:
        if value == everything_default:
            return {}
        out = {}
        for name, encoder, _d, _r in compiled:
            item = getattr(value, name)
            if item != defaults[name]:
                out[name] = encoder(item, blobs)
        return out

    def decode(raw: Any, blobs: Frames) -> Any:
        if type(raw) is not dict:
            raise TypeError(f"a {cls.__name__} is an object")
        if not raw:
            return everything_default
        return cls(**{name: decoder(raw[name], blobs) for name, _e, decoder, _r in compiled if name in raw})
    return encode, decode
