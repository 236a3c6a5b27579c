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

from dataclasses import dataclass
from typing import Any

import orjson

from zraft.wire.sql import Params, ParamValue, Statement, decode_params, encode_params

COMMAND_VERSION = 1
"""Version of an ordinary command. Bump it only with a decoder for the old one."""
READ_ONLY_VERSION = 2
"""Version of a read-only command (``"ro": true``, a strong query). A build that only knows
version 1 refuses it instead of running it as a write; version 1 payloads stay unchanged."""
_KNOWN_VERSIONS = (COMMAND_VERSION, READ_ONLY_VERSION)


class CommandError(ValueError):
    """A command could not be encoded, or a payload is not a valid command."""


class UnsupportedCommandVersion(CommandError):
    """The payload was written by a build that uses a command version this one cannot read."""


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
    try:
        params = encode_params(stmt.params)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if params is not None:
        out["params"] = params
    return out


def _decode_stmt(raw: object) -> Statement:
    if not isinstance(raw, dict) or not isinstance(raw.get("sql"), str):
        raise CommandError("each statement must be an object with a string 'sql'")
    try:
        return Statement(raw["sql"], decode_params(raw.get("params")))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


__all__ = ["COMMAND_VERSION", "Command", "CommandError", "ParamValue", "Params", "Statement",
           "UnsupportedCommandVersion", "decode_command", "encode_command"]
