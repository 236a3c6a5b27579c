"""Statements in from clients: rqlite request bodies, native client statements, and the
request-level checks on them.

Rules of this module:
- it validates everything that comes from outside and raises BadRequest with rqlite's
  messages ("invalid request", "no statements", "too many statements", "unsupported type");
  it never touches I/O;
- rqlite's body forms (`rqlite:http/request_parser.go`): an element is a SQL string, or a
  list whose first item is the SQL and whose other items are positional parameters or
  objects of named parameters;
- parameter values map like rqlite's `makeParameter`: integers outside int64 become floats,
  a string `x'0A1B'` is a BLOB, a list of integers 0..255 is a BLOB, anything else that is
  not a JSON scalar is "unsupported type";
- between zraft processes and nodes statements travel as `zraft.wire.sql.Statement`, which
  the codec encodes and validates (BLOBs as `{"b64": ...}`, decoded only by
  zraft.wire.sql); a native request's statements arrive decoded, and only their number is
  checked here (`check_count`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from zraft.api.errors import BadRequest
from zraft.wire.sql import Params, ParamValue, Statement

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_HEX_BLOB = re.compile(r"[xX]'((?:[0-9a-fA-F]{2})*)'")
_DISALLOWED_PRAGMA = re.compile(
    r"^\s*PRAGMA\s+(?:[\w\"`\[\]]+\s*\.\s*)?[\"`\[]?"
    r"(?:(?:journal_mode|wal_autocheckpoint|synchronous|query_only)[\"`\]]?\s*=|wal_checkpoint)",
    re.IGNORECASE)


# == rqlite HTTP bodies =======================================================================
def parse_body(doc: Any, max_statements: int) -> list[Statement]:
    """The statements of a decoded JSON request body."""
    if not isinstance(doc, list):
        raise BadRequest("invalid request")
    check_count(doc, max_statements)
    return [_parse_element(element) for element in doc]


def check_count(statements: Sequence[object], max_statements: int) -> None:
    """rqlite's bounds on one request: at least one statement, at most `max_statements`."""
    if not statements:
        raise BadRequest("no statements")
    if len(statements) > max_statements:
        raise BadRequest(f"too many statements: {len(statements)} > {max_statements}")


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


# == native Python clients ====================================================================
def normalize_client_statement(item: Any) -> Statement:
    """A native client's statement (`"sql"`, `("sql", params)`, or rqlite's
    `["sql", p1, p2]` / `["sql", {"name": v}]`), with rqlite's value rules; used by
    zraft.client."""
    if isinstance(item, str):
        return Statement(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and (
        item[1] is None or isinstance(item[1], list | dict | tuple)
    ):
        params = list(item[1]) if isinstance(item[1], tuple) else item[1]
        return Statement(item[0], _parse_params([params]) if isinstance(params, dict)
                         else _parse_params(params) if params else None)
    if isinstance(item, list | tuple) and item and isinstance(item[0], str):
        return Statement(item[0], _parse_params(list(item[1:])))
    raise BadRequest("invalid request: a statement is a SQL string or [sql, params...]")


# == request-level checks =====================================================================
def disallowed_pragma(sql: str) -> bool:
    """rqlite's request-level check (db/state.go): PRAGMAs that would break the node."""
    return any(_DISALLOWED_PRAGMA.match(part) for part in sql.split(";"))
