"""The replicated command: the SQL that travels inside one Raft log entry.

Log entries outlive the binary that wrote them, so the payload carries its own version and
decoding refuses any version it does not know instead of guessing:

- ``"v": 1``: statements and the ``tx`` flag;
- ``"v": 2``: the same plus ``"ro": true`` (a strong query, applied with the write veto on);
- ``"v": 4``: one step of a bulk load (`/db/load` or `/boot` of a SQLite file, zraft/store/loading.py),
  either a chunk ``{"v": 4, "load": "<id>", "seq": 0, "data": "<base64>"}`` that every node
  stages inside its database, or the commit ``{"v": 4, "load": "<id>", "chunks": N, "size": B,
  "crc": C}`` after which every node swaps the staged file in (or answers an error, alike).
- ``"v": 3``: a *stamped* command (``ro`` optional): the proposer's wall clock ``time_ms``
  (integer milliseconds since the Unix epoch), a random 63-bit ``seed`` and the VM-step
  ``budget`` of the entry. Every node applies a stamped entry with SQLite's clock reading
  ``time_ms`` and ``random()``/``randomblob()`` drawn from ``seed``, and stops the entry's
  statements after ``budget`` SQLite VM steps (zraft/store/DESIGN.md, "Determinism").
  Versions 1 and 2 still decode and apply as they always did: real clock, real randomness,
  no budget.

Wire form (orjson, UTF-8 JSON object)::

    {"v": 3, "tx": false, "time_ms": 1767225600000, "seed": 4511337390210483712, "budget": 500000000,
     "stmts": [{"sql": "INSERT ... VALUES(?, ?)", "params": [1, {"b64": "AAE="}]}, {"sql": "SELECT 1"}]}

- ``tx``: the ``transaction`` flag.
- ``params`` is absent when the statement has no parameters (``None``); otherwise a JSON
  array (positional) or object (named, keys without the ``:``/``@``/``$`` prefix).
- Parameter values are JSON scalars (integer, float, string, true/false, null) except BLOBs:
  JSON has no bytes, so a ``bytes`` value is written as the one-key object
  ``{"b64": "<standard base64 with padding>"}``. A parameter value is never a JSON object
  otherwise, so the tag cannot be confused with user data; any other object is rejected.
- Floats must be finite: orjson would silently turn NaN/Infinity into null.

Two kinds of bad payload are told apart, because they must be handled differently:
``UnsupportedCommandVersion`` (an integer version above the newest this build reads) was
written by a newer build, which other nodes may apply, so the store must wait at that entry
rather than answer it; every other ``CommandError`` is a payload no build can apply, which
every node answers with the same error result.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from zraft.wire.sql import Params, ParamValue, Statement, decode_params, encode_params

COMMAND_VERSION = 1
"""Version of an ordinary command without a stamp. Bump versions only with a decoder for the old one."""
READ_ONLY_VERSION = 2
"""Version of a read-only command (``"ro": true``, a strong query) without a stamp. A build that
only knows version 1 refuses it instead of running it as a write."""
STAMPED_VERSION = 3
"""Version of a stamped command (time, seed, budget), read-only or not."""
LOAD_VERSION = 4
"""Version of a bulk-load step (LoadChunk, LoadCommit). A build without bulk loads waits at it
(UnsupportedCommandVersion) instead of answering it differently from upgraded nodes."""
NEWEST_VERSION = LOAD_VERSION
_KNOWN_VERSIONS = (COMMAND_VERSION, READ_ONLY_VERSION, STAMPED_VERSION, LOAD_VERSION)
MAX_LOAD_CHUNK = 4 << 20
"""The most raw bytes one LoadChunk may carry (its entry is about 4/3 of that as base64)."""
_LOAD_ID = re.compile(r"[0-9a-f]{32}")
MAX_LOAD_CHUNKS = 1 << 24

DEFAULT_BUDGET = 500_000_000
"""SQLite VM steps one entry may run when the proposer names no budget (store.max_write_steps).
About 4 s of SQLite work on the CI kind of machine (~115 M simple steps/s)."""
MAX_BUDGET = 100 * DEFAULT_BUDGET
"""The largest budget an entry may carry (minutes of SQLite work): an entry stamped with more
is not a valid command (an error result on every node), so that no proposer, configured or
forged, can make one entry hold every store for long."""
MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31 23:59:59.999 UTC, the last instant SQLite's date functions can show."""
SEED_BITS = 63


class CommandError(ValueError):
    """A command could not be encoded, or a payload is not a valid command."""


class UnsupportedCommandVersion(CommandError):
    """The payload was written by a build that uses a newer command version than this one reads."""

    def __init__(self, message: str, version: int = 0) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True, slots=True)
class Command:
    """What one log entry asks every node to execute, in order.

    ``transaction=True`` makes the statements all-or-nothing (rqlite's ``?transaction``);
    otherwise each statement succeeds or fails on its own.

    A *stamped* command (``time_ms``, ``seed`` and ``budget`` all set, see ``stamped``) is
    applied deterministically; an unstamped one (versions 1 and 2) with the node's clock and
    randomness and no step budget, as before version 3 existed.
    """

    statements: list[Statement]
    transaction: bool = False
    read_only: bool = False
    """Executed read-only on every node (a strong query): writes get rqlite's
    "attempt to change database via query operation" and change nothing."""
    time_ms: int | None = None
    """The proposer's wall clock, integer ms since the Unix epoch: SQLite's 'now' on apply."""
    seed: int | None = None
    """Random 63-bit integer from which random() and randomblob() are drawn on apply."""
    budget: int | None = None
    """SQLite VM steps the entry's statements may run, all together, on apply."""

    @property
    def is_stamped(self) -> bool:
        return self.time_ms is not None

    @classmethod
    def stamped(cls, statements: list[Statement], transaction: bool = False, read_only: bool = False, *,
                budget: int | None = None, time_ms: int | None = None, seed: int | None = None) -> Command:
        """A command stamped by its proposer: this clock (or ``time_ms``), a fresh random seed
        (or ``seed``) and ``budget`` VM steps (DEFAULT_BUDGET when None)."""
        return cls(statements, transaction, read_only,
                   time_ms=time.time_ns() // 1_000_000 if time_ms is None else time_ms,
                   seed=int.from_bytes(os.urandom(8), "big") >> (64 - SEED_BITS) if seed is None else seed,
                   budget=DEFAULT_BUDGET if budget is None else budget)


@dataclass(frozen=True, slots=True)
class LoadChunk:
    """Bytes ``seq`` of bulk load ``load_id``: every node stages them in its database (the
    staging travels with snapshots and survives restarts like any applied data)."""

    load_id: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LoadCommit:
    """The end of bulk load ``load_id``: ``chunks`` chunks, ``size`` bytes whose CRC-32 is
    ``crc``. Every node assembles the staged chunks, checks them and swaps the file in."""

    load_id: str
    chunks: int
    size: int
    crc: int


@dataclass(frozen=True, slots=True)
class LoadAbort:
    """Bulk load ``load_id`` ends without a swap: every node drops its staged chunks and
    answers ``message``. Proposed by a proposer that gives up (``{"v": 4, "load": id,
    "abort": true}``), and what a commit whose checks fail becomes on apply."""

    load_id: str
    message: str


Payload = Command | LoadChunk | LoadCommit | LoadAbort
"""What a log entry's data decodes to."""


def new_load_id() -> str:
    """A fresh bulk-load id: 128 random bits in hex."""
    return os.urandom(16).hex()


def encode_load_step(step: LoadChunk | LoadCommit | LoadAbort) -> bytes:
    """Serialise one bulk-load step for a log entry; raises CommandError for values out of range."""
    doc: dict[str, Any] = {"v": LOAD_VERSION, "load": step.load_id}
    if isinstance(step, LoadChunk):
        doc["seq"] = step.seq
        doc["data"] = base64.b64encode(step.data).decode()
    elif isinstance(step, LoadAbort):
        doc["abort"] = True
    else:
        doc["chunks"], doc["size"], doc["crc"] = step.chunks, step.size, step.crc
    _decode_load(doc)  # refuse to write what no node would read
    return orjson.dumps(doc)


def _decode_load(doc: dict[str, Any]) -> LoadChunk | LoadCommit | LoadAbort:
    load_id = doc.get("load")
    if not isinstance(load_id, str) or not _LOAD_ID.fullmatch(load_id):
        raise CommandError("'load' must be 32 lowercase hex digits")
    if doc.get("abort") is True:
        return LoadAbort(load_id, f"load {load_id} was abandoned by the node that proposed it")
    if "data" in doc:
        seq, data = doc.get("seq"), doc.get("data")
        if type(seq) is not int or not 0 <= seq < MAX_LOAD_CHUNKS or not isinstance(data, str):
            raise CommandError(f"a load chunk needs an integer 'seq' below {MAX_LOAD_CHUNKS} and a string 'data'")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("a load chunk's 'data' must be standard base64") from None
        if not 0 < len(raw) <= MAX_LOAD_CHUNK:
            raise CommandError(f"a load chunk carries 1 to {MAX_LOAD_CHUNK} bytes, not {len(raw)}")
        return LoadChunk(load_id, seq, raw)
    chunks, size, crc = doc.get("chunks"), doc.get("size"), doc.get("crc")
    if (type(chunks) is not int or not 0 < chunks <= MAX_LOAD_CHUNKS or type(size) is not int
            or not chunks <= size <= chunks * MAX_LOAD_CHUNK or type(crc) is not int or not 0 <= crc < 1 << 32):
        raise CommandError("a load commit needs integer 'chunks', 'size' and 'crc' in range")
    return LoadCommit(load_id, chunks, size, crc)


def encode_command(cmd: Command) -> bytes:
    """Serialise ``cmd`` for a log entry; raises CommandError for values JSON cannot carry."""
    doc: dict[str, Any] = {"tx": cmd.transaction, "stmts": [_encode_stmt(s) for s in cmd.statements]}
    stamp = (cmd.time_ms, cmd.seed, cmd.budget)
    if any(v is not None for v in stamp):
        if not all(v is not None for v in stamp):
            raise CommandError("a stamped command needs time_ms, seed and budget together")
        doc["v"] = STAMPED_VERSION
        doc["time_ms"], doc["seed"], doc["budget"] = stamp
        _check_stamp(doc)
    else:
        doc["v"] = READ_ONLY_VERSION if cmd.read_only else COMMAND_VERSION
    if cmd.read_only:
        doc["ro"] = True
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError as exc:
        raise CommandError(f"cannot encode command: {exc}") from exc


def decode_command(data: bytes) -> Payload:
    """Parse a log-entry payload; raises CommandError (or UnsupportedCommandVersion)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"command is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CommandError("command must be a JSON object")
    version = doc.get("v")
    if isinstance(version, int) and not isinstance(version, bool) and version > NEWEST_VERSION:
        raise UnsupportedCommandVersion(
            f"unsupported command version {version!r}; this build reads versions {_KNOWN_VERSIONS}", version)
    if version not in _KNOWN_VERSIONS or isinstance(version, bool):
        raise CommandError(f"invalid command version {version!r}; this build reads versions {_KNOWN_VERSIONS}")
    if version == LOAD_VERSION:
        return _decode_load(doc)
    tx, stmts = doc.get("tx"), doc.get("stmts")
    if not isinstance(tx, bool) or not isinstance(stmts, list):
        raise CommandError("command needs a boolean 'tx' and a list 'stmts'")
    read_only = doc.get("ro", False)
    if not isinstance(read_only, bool):
        raise CommandError("'ro' must be a boolean")
    if version == STAMPED_VERSION:
        _check_stamp(doc)
        return Command([_decode_stmt(s) for s in stmts], tx, read_only,
                       time_ms=doc["time_ms"], seed=doc["seed"], budget=doc["budget"])
    if read_only != (version == READ_ONLY_VERSION):
        raise CommandError("'ro' must be true exactly in a version 2 command")
    return Command([_decode_stmt(s) for s in stmts], tx, read_only)


_STAMP_RANGES = (("time_ms", 0, MAX_TIME_MS), ("seed", 0, (1 << SEED_BITS) - 1), ("budget", 1, MAX_BUDGET))


def _check_stamp(doc: dict[str, Any]) -> None:
    for key, low, high in _STAMP_RANGES:
        value = doc.get(key)
        if type(value) is not int or not low <= value <= high:
            raise CommandError(f"'{key}' must be an integer from {low} to {high}, not {value!r}")


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


__all__ = ["COMMAND_VERSION", "DEFAULT_BUDGET", "LOAD_VERSION", "MAX_LOAD_CHUNK", "NEWEST_VERSION", "STAMPED_VERSION",
           "Command", "CommandError", "LoadAbort", "LoadChunk", "LoadCommit", "ParamValue", "Params", "Payload", "Statement",
           "UnsupportedCommandVersion", "decode_command", "encode_command", "encode_load_step", "new_load_id"]
