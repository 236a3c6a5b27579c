"""SQL statements and their parameter values, as every zraft boundary carries them.

A statement crosses three boundaries: inside a Raft log entry (zraft.store.command), between
processes and nodes (zraft.wire.messages: Query, ClientExecute, ClientQuery) and in rqlite's
HTTP bodies (zraft.api.statements, which has rqlite's own value rules). The first two share
one JSON form, defined here once:

- a parameter value is a JSON scalar (integer, float, string, true/false, null) or a BLOB;
  JSON has no bytes, so a BLOB is the one-key object `{"b64": "<standard base64>"}`. No other
  parameter value is ever an object, so the tag cannot be mistaken for user data;
- floats must be finite (orjson would turn NaN and infinities into null);
- parameters are a list (positional), an object (named, keys without their `:`/`@`/`$`
  prefix) or absent.

`encode_param`/`decode_param` are the only BLOB encoder and decoder in zraft; decoding raises
`ValueError` with a message fit for a client, and callers wrap it in their own error type.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, TypeAlias

ParamValue: TypeAlias = int | float | str | bytes | bool | None
Params: TypeAlias = list[ParamValue] | dict[str, ParamValue] | None


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement and its parameters (positional list, named dict, or none)."""

    sql: str
    params: Params = None


def encode_param(value: object) -> Any:
    """A parameter value in its JSON form; ValueError for what JSON cannot carry faithfully."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite float parameter {value!r} cannot be replicated")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"unsupported parameter type {type(value).__name__}")


def decode_param(raw: object) -> ParamValue:
    """A parameter value from its JSON form; ValueError when `raw` is not one."""
    if isinstance(raw, dict):
        blob = raw.get("b64")
        if len(raw) != 1 or not isinstance(blob, str):
            raise ValueError("a parameter object must be exactly {'b64': <base64 string>}")
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 BLOB parameter: {exc}") from None
    if raw is None or isinstance(raw, bool | int | str):
        return raw
    if isinstance(raw, float) and math.isfinite(raw):
        return raw
    raise ValueError(f"unsupported parameter value {raw!r}")


def encode_params(params: Params) -> Any:
    """Parameters in their JSON form (None stays None); ValueError as encode_param."""
    if params is None:
        return None
    if isinstance(params, dict):
        return {str(k): encode_param(v) for k, v in params.items()}
    if isinstance(params, list | tuple):
        return [encode_param(v) for v in params]
    raise ValueError(f"params must be a list, a dict or None, not {type(params).__name__}")


def decode_params(raw: object) -> Params:
    """Parameters from their JSON form; ValueError when `raw` is not a list, object or null."""
    if raw is None:
        return None
    if isinstance(raw, list):
        return [decode_param(v) for v in raw]
    if isinstance(raw, dict):
        return {str(k): decode_param(v) for k, v in raw.items()}
    raise ValueError("statement parameters must be a list, an object or null")


def statement_to_pair(statement: Statement) -> list[Any]:
    """The `[sql, params]` pair messages carry."""
    return [statement.sql, encode_params(statement.params)]


def statement_from_pair(raw: object) -> Statement:
    """A statement from `[sql, params]` (or `[sql]`, or a bare SQL string); ValueError if invalid."""
    if isinstance(raw, str):
        return Statement(raw)
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2 or not isinstance(raw[0], str):
        raise ValueError("a statement is [sql, params]")
    return Statement(raw[0], decode_params(raw[1] if len(raw) == 2 else None))
