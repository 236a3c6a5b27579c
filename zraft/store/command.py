"""The replicated command: the SQL that travels inside one Raft log entry.

Log entries outlive the binary that wrote them, so the payload carries its own version
(`"v": 1`; `"v": 2` adds `"ro": true`) and decoding refuses any version it does not know instead of guessing.

Wire form (orjson, UTF-8 JSON object)::

    {"v": 1, "tx": false, "stmts": [{"sql": "INSERT ... VALUES(?, ?)", "params": [1, {"b64": "AAE="}]},
                                     {"sql": "SELECT 1"}]}

- ``tx``: the ``transaction`` flag.
- ``params`` is absent when the statement has no parameters (``None``); otherwise a JSON
  array (positional) or object (named, keys without the ``:``/``@``/``$`` prefix).
- Parameter values are JSON scalars (integer, float, string, true/false, null) except BLOBs:
  JSON has no bytes, so a ``bytes`` value is written as the one-key object
  ``{"b64": "<standard base64 with padding>"}``. A parameter value is never a JSON object
  otherwise, so the tag cannot be confused with user data; any other object is rejected.
- Floats must be finite: orjson would silently turn NaN/Infinity into null.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

COMMAND_VERSION = 1
"""Version of an ordinary command. Bump it only with a decoder for the old one."""
READ_ONLY_VERSION = 2
"""Version of a read-only command (``"ro": true``, a strong query). A build that only knows
version 1 refuses it instead of running it as a write; version 1 payloads stay unchanged."""
_KNOWN_VERSIONS = (COMMAND_VERSION, READ_ONLY_VERSION)

ParamValue: TypeAlias = int | float | str | bytes | bool | None
Params: TypeAlias = list[ParamValue] | dict[str, ParamValue] | None


class CommandError(ValueError):
    """A command could not be encoded, or a payload is not a valid command."""


class UnsupportedCommandVersion(CommandError):
    """The payload was written by a build that uses a command version this one cannot read."""


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement and its parameters (positional list, named dict, or none)."""

    sql: str
    params: Params = None


@dataclass(frozen=True, slots=True)
class Command:
    """What one log entry asks every node to execute, in order.

    ``transaction=True`` makes the statements all-or-nothing (rqlite's ``?transaction``);
    otherwise each statement succeeds or fails on its own.
    """

    statements: list[Statement]
    transaction: bool = False
    read_only: bool = False
    """Executed read-only on every node (a strong query): writes get rqlite's
    "attempt to change database via query operation" and change nothing."""


def encode_command(cmd: Command) -> bytes:
    """Serialise ``cmd`` for a log entry; raises CommandError for values JSON cannot carry."""
    doc: dict[str, Any] = {"v": READ_ONLY_VERSION if cmd.read_only else COMMAND_VERSION, "tx": cmd.transaction,
                           "stmts": [_encode_stmt(s) for s in cmd.statements]}
    if cmd.read_only:
        doc["ro"] = True
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError as exc:
        raise CommandError(f"cannot encode command: {exc}") from exc


def decode_command(data: bytes) -> Command:
    """Parse a log-entry payload; raises CommandError (or UnsupportedCommandVersion)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"command is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CommandError("command must be a JSON object")
    version = doc.get("v")
    if version not in _KNOWN_VERSIONS or isinstance(version, bool):
        raise UnsupportedCommandVersion(
            f"unsupported command version {version!r}; this build reads versions {_KNOWN_VERSIONS}"
        )
    tx, stmts = doc.get("tx"), doc.get("stmts")
    if not isinstance(tx, bool) or not isinstance(stmts, list):
        raise CommandError("command needs a boolean 'tx' and a list 'stmts'")
    read_only = doc.get("ro", False)
    if not isinstance(read_only, bool) or read_only != (version == READ_ONLY_VERSION):
        raise CommandError("'ro' must be true exactly in a version 2 command")
    return Command([_decode_stmt(s) for s in stmts], tx, read_only)


def _encode_stmt(stmt: Statement) -> dict[str, Any]:
    out: dict[str, Any] = {"sql": stmt.sql}
    if isinstance(stmt.params, list):
        out["params"] = [_encode_value(v) for v in stmt.params]
    elif isinstance(stmt.params, dict):
        out["params"] = {str(k): _encode_value(v) for k, v in stmt.params.items()}
    elif stmt.params is not None:
        raise CommandError(f"params must be a list, a dict or None, not {type(stmt.params).__name__}")
    return out


def _encode_value(value: object) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandError(f"non-finite float parameter {value!r} cannot be replicated")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CommandError(f"unsupported parameter type {type(value).__name__}")


def decode_statement(raw: object) -> Statement:
    """One statement in its wire form ({"sql", "params"}, BLOBs as {"b64": ...}); CommandError if invalid."""
    return _decode_stmt(raw)


def _decode_stmt(raw: object) -> Statement:
    if not isinstance(raw, dict) or not isinstance(raw.get("sql"), str):
        raise CommandError("each statement must be an object with a string 'sql'")
    params = raw.get("params")
    if params is None:
        return Statement(raw["sql"], None)
    if isinstance(params, list):
        return Statement(raw["sql"], [_decode_value(v) for v in params])
    if isinstance(params, dict):
        return Statement(raw["sql"], {k: _decode_value(v) for k, v in params.items()})
    raise CommandError("statement 'params' must be a list or an object")


def _decode_value(value: object) -> ParamValue:
    if isinstance(value, dict):
        blob = value.get("b64")
        if len(value) != 1 or not isinstance(blob, str):
            raise CommandError("a parameter object must be exactly {'b64': <base64 string>}")
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error as exc:
            raise CommandError(f"invalid base64 BLOB parameter: {exc}") from exc
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CommandError(f"unsupported parameter value {value!r}")
