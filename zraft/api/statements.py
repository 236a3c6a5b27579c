"""Statements in, statements out: rqlite request bodies and the `[sql, params]` wire pairs.

Rules of this module:
- it validates everything that comes from outside and raises BadRequest with rqlite's
  messages ("invalid request", "no statements", "unsupported type"); it never touches I/O;
- rqlite's body forms (`rqlite:http/request_parser.go`): an element is a SQL string, or a
  list whose first item is the SQL and whose other items are positional parameters or
  objects of named parameters;
- parameter values map like rqlite's `makeParameter`: integers outside int64 become floats,
  a string `x'0A1B'` is a BLOB, a list of integers 0..255 is a BLOB, anything else that is
  not a JSON scalar is "unsupported type";
- on the wire between zraft processes (ClientExecute, ClientQuery, Query) a statement is
  `[sql, params]` with params a list, an object or null, and a BLOB is `{"b64": "..."}`,
  the tagging `zraft.store.command` uses in log entries.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from zraft.api.errors import BadRequest
from zraft.store.command import Params, ParamValue, Statement

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_HEX_BLOB = re.compile(r"[xX]'((?:[0-9a-fA-F]{2})*)'")


# == rqlite HTTP bodies =======================================================================
def parse_body(doc: Any, max_statements: int) -> list[Statement]:
    """The statements of a decoded JSON request body."""
    if not isinstance(doc, list):
        raise BadRequest("invalid request")
    if not doc:
        raise BadRequest("no statements")
    if len(doc) > max_statements:
        raise BadRequest(f"too many statements: {len(doc)} > {max_statements}")
    return [_parse_element(element) for element in doc]


def _parse_element(element: Any) -> Statement:
    if isinstance(element, str):
        return Statement(element)
    if isinstance(element, list) and element and isinstance(element[0], str):
        return Statement(element[0], _parse_params(element[1:]))
    raise BadRequest("invalid request")


def _parse_params(raw: list[Any]) -> Params:
    if not raw:
        return None
    positional: list[ParamValue] = []
    named: dict[str, ParamValue] = {}
    saw_named = False
    for item in raw:
        if isinstance(item, dict):
            saw_named = True
            named.update((str(k), _parse_value(v)) for k, v in item.items())
        else:
            positional.append(_parse_value(item))
    if saw_named and positional:
        raise BadRequest("unsupported type: positional and named parameters in one statement")
    return named if saw_named else positional


def _parse_value(value: Any) -> ParamValue:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, bytes | bytearray):  # only from native Python callers
        return bytes(value)
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest("unsupported type: non-finite number")
        return value
    if isinstance(value, str):
        match = _HEX_BLOB.fullmatch(value)
        return bytes.fromhex(match.group(1)) if match else value
    if isinstance(value, list) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value
    ):
        return bytes(value)
    raise BadRequest(f"unsupported type: {type(value).__name__}")


# == [sql, params] wire pairs ================================================================
def to_wire(statements: list[Statement]) -> list[Any]:
    """Statements as JSON-ready `[sql, params]` pairs."""
    return [[s.sql, _params_to_wire(s.params)] for s in statements]


def _params_to_wire(params: Params) -> Any:
    if params is None:
        return None
    if isinstance(params, dict):
        return {k: _value_to_wire(v) for k, v in params.items()}
    return [_value_to_wire(v) for v in params]


def _value_to_wire(value: ParamValue) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def from_wire(raw: Any, max_statements: int) -> list[Statement]:
    """Validate `[sql, params]` pairs (a bare SQL string is accepted too)."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest("no statements")
    if len(raw) > max_statements:
        raise BadRequest(f"too many statements: {len(raw)} > {max_statements}")
    return [_statement_from_wire(item) for item in raw]


def _statement_from_wire(item: Any) -> Statement:
    if isinstance(item, str):
        return Statement(item)
    if not isinstance(item, list) or not 1 <= len(item) <= 2 or not isinstance(item[0], str):
        raise BadRequest("invalid request: a statement is [sql, params]")
    params = item[1] if len(item) == 2 else None
    if params is None:
        return Statement(item[0])
    if isinstance(params, list):
        return Statement(item[0], [_value_from_wire(v) for v in params])
    if isinstance(params, dict):
        return Statement(item[0], {str(k): _value_from_wire(v) for k, v in params.items()})
    raise BadRequest("invalid request: params must be a list, an object or null")


def _value_from_wire(value: Any) -> ParamValue:
    if isinstance(value, dict):
        blob = value.get("b64")
        if len(value) != 1 or not isinstance(blob, str):
            raise BadRequest("unsupported type: a parameter object must be {'b64': ...}")
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise BadRequest("unsupported type: invalid base64 BLOB") from None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise BadRequest(f"unsupported type: {type(value).__name__}")


def normalize_client_statement(item: Any) -> list[Any]:
    """A native client's statement (`"sql"`, `("sql", params)`, or rqlite's
    `["sql", p1, p2]` / `["sql", {"name": v}]`) as a wire pair; used by zraft.client."""
    if isinstance(item, str):
        return [item, None]
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and (
        item[1] is None or isinstance(item[1], list | dict | tuple)
    ):
        params = list(item[1]) if isinstance(item[1], tuple) else item[1]
        statement = Statement(item[0], _parse_params([params]) if isinstance(params, dict)
                              else _parse_params(params) if params else None)
        pair: list[Any] = to_wire([statement])[0]
        return pair
    if isinstance(item, list | tuple) and item and isinstance(item[0], str):
        pair = to_wire([Statement(item[0], _parse_params(list(item[1:])))])[0]
        return pair
    raise BadRequest("invalid request: a statement is a SQL string or [sql, params...]")
