"""Per-statement result objects in rqlite's JSON shapes, and how values are normalised.

Shapes (rqlite ``command/encoding/json.go``; every field is omitted when empty/zero):

- write:  ``{"last_insert_id": n, "rows_affected": n}``  (``{}`` for CREATE TABLE, etc.)
- rows:   ``{"columns": [..], "types": [..], "values": [[..]]}``  (no ``values`` key without rows)
- error:  ``{"error": "<sqlite message>"}``
- associative rows: ``{"types": {col: type}, "rows": [{col: value}]}`` (``rows`` always present,
  keys sorted as Go sorts map keys); associative write results gain ``"rows": null``.

Results are built *raw*: BLOB values stay ``bytes`` so that the choice between base64 and
``blob_array`` can be made when the response is rendered (a result computed at apply time
is rendered later, with the options of the request that is waiting for it).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, TypeAlias

from zraft.store import gotime

SQLiteValue: TypeAlias = int | float | str | bytes | None
Result: TypeAlias = dict[str, Any]
Description: TypeAlias = Sequence[tuple[str, str | None]]

TIME_TYPES = frozenset({"date", "datetime", "timestamp"})
_TEXT_PREFIXES = ("varchar", "varying character", "nchar", "native character", "nvarchar", "clob")


def write_result(last_insert_id: int, rows_affected: int) -> Result:
    """Result of a statement that returns no columns; zero fields are omitted like rqlite."""
    out: Result = {}
    if last_insert_id:
        out["last_insert_id"] = last_insert_id
    if rows_affected:
        out["rows_affected"] = rows_affected
    return out


def error_result(message: str) -> Result:
    return {"error": message}


def rows_result(description: Description, rows: Sequence[Sequence[SQLiteValue]]) -> Result:
    """Result of a statement that returns columns, with rqlite's value/type conversions.

    Raises ValueError when a value cannot be rendered (a time outside years 0..9999), which
    rqlite reports as the statement's error.
    """
    declared = [(decl or "").lower() for _, decl in description]
    values = [[_normalize(v, t) for v, t in zip(row, declared, strict=True)] for row in rows]
    out: Result = {}
    if description:
        out["columns"] = [name for name, _ in description]
        out["types"] = _fill_types(declared, values[0] if values else None)
    if values:
        out["values"] = values
    return out


def is_text_type(declared: str) -> bool:
    """rqlite's test (db.go ``isTextType``) for turning BLOB bytes into a JSON string."""
    return declared in ("text", "json", "") or declared.startswith(_TEXT_PREFIXES)


def render(result: Result, *, associative: bool = False, blob_array: bool = False, query: bool = False) -> Result:
    """JSON-ready copy of a raw result.

    ``query`` tells whether it came from the query path, where every result is a rows object
    (rqlite ``QueryRows``): an associative error is ``{"rows": [], "error": ..}`` there, while
    on the execute path an error stays ``{"error": ..}`` and writes gain ``"rows": null``.
    """
    if query or "columns" in result:
        values = [[_render_value(v, blob_array) for v in row] for row in result.get("values", [])]
        return _associative_rows(result, values) if associative else _plain_rows(result, values)
    if associative and "error" not in result:
        return {**result, "rows": None}
    return dict(result)


def _normalize(value: SQLiteValue, declared: str) -> Any:
    """go-sqlite3 + rqlite value mapping, driven by the column's declared type."""
    if isinstance(value, int):
        if declared in TIME_TYPES:
            return gotime.from_unix(value)
        return value > 0 if declared == "boolean" else value
    if isinstance(value, str):
        return gotime.from_text(value) if declared in TIME_TYPES else value
    if isinstance(value, bytes) and is_text_type(declared):
        return value.decode("utf-8", "replace")
    return value


def _fill_types(declared: list[str], first_row: list[Any] | None) -> list[str]:
    """Columns without a declared type take the runtime type of the first row (rqlite quirk)."""
    if first_row is None:
        return declared
    return [t if t else _runtime_type(v) for t, v in zip(declared, first_row, strict=True)]


def _runtime_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    if isinstance(value, bytes):
        return "blob"
    return "text" if isinstance(value, str) else ""


def _render_value(value: Any, blob_array: bool) -> Any:
    if isinstance(value, bytes):
        return list(value) if blob_array else base64.b64encode(value).decode("ascii")
    return value


def _plain_rows(result: Result, values: list[list[Any]]) -> Result:
    out: Result = {k: list(result[k]) for k in ("columns", "types") if k in result}
    if values:
        out["values"] = values
    if "error" in result:
        out["error"] = result["error"]
    return out


def _associative_rows(result: Result, values: list[list[Any]]) -> Result:
    columns: list[str] = result.get("columns", [])
    out: Result = {}
    if columns:
        out["types"] = _go_map(columns, result["types"])
    out["rows"] = [_go_map(columns, row) for row in values]
    if "error" in result:
        out["error"] = result["error"]
    return out


def _go_map(keys: list[str], values: Sequence[Any]) -> dict[str, Any]:
    """A Go map as encoding/json writes it: the last duplicate key wins, keys sorted."""
    merged = dict(zip(keys, values, strict=True))
    return {k: merged[k] for k in sorted(merged)}
