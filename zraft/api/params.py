"""rqlite's query parameters, validated up front (rqlite http/query_params.go).

Flags count by presence (their value is ignored), durations are Go durations ("500ms", "2s",
"1m30s") of at most api.max_duration_ms, so that no deadline or wire field can overflow, and
anything invalid is a BadRequest with a one-line message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multidict import MultiMapping

from zraft.api.errors import BadRequest
from zraft.api.service import LEVELS

DURATION_KEYS = ("timeout", "freshness", "db_timeout", "linearizable_timeout")
DEFAULT_MAX_DURATION_S = 3600.0
"""config.api.max_duration_ms's default, for callers without a config."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration ("1.5s", "300ms", "1m30s", "0") in seconds; ValueError otherwise."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(text)
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(text)
    return -total if text.startswith("-") else total


def format_duration(seconds: float) -> str:
    """A duration as Go prints it, to the millisecond: "1h0m0s", "1m30s", "2.5s", "300ms"."""
    ms = round(seconds * 1000)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:g}s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs if ms >= 1000 else f"{ms}ms"


@dataclass(frozen=True, slots=True)
class Params:
    pretty: bool = False
    timings: bool = False
    transaction: bool = False
    associative: bool = False
    blob_array: bool = False
    raft_index: bool = False
    redirect: bool = False
    qualify_columns: bool = False
    norwrandom: bool = False
    norwtime: bool = False
    noparse: bool = False
    queue: bool = False
    wait: bool = False
    noleader: bool = False
    freshness: float | None = None
    freshness_strict: bool = False
    level: str = "weak"
    timeout: float | None = None
    db_timeout: float | None = None


def parse_params(query: MultiMapping[str], max_duration_s: float = DEFAULT_MAX_DURATION_S) -> Params:
    """rqlite's query parameters (http/query_params.go), validated up front. A duration over
    `max_duration_s` is refused: it would hold an admission slot for as long, and its
    milliseconds could overflow the 64-bit fields of the wire (infinity included)."""
    durations: dict[str, float | None] = {}
    for key in DURATION_KEYS:
        raw = query.get(key)
        try:
            durations[key] = None if raw is None else parse_duration(raw)
        except ValueError:
            raise BadRequest(f"{key} is not a valid duration") from None
    for key in ("retries", "trailing_logs"):
        raw = query.get(key)
        if raw is not None and not re.fullmatch(r"[+-]?\d+", raw):
            raise BadRequest(f"{key} is not a valid integer")
    for key, value in durations.items():
        if value is not None and value < 0:
            raise BadRequest(f"{key} must not be negative")
        if value is not None and value > max_duration_s:
            raise BadRequest(f"{key} is too long: at most {format_duration(max_duration_s)}")
    if "freshness_strict" in query and "freshness" not in query:
        raise BadRequest("freshness_strict requires freshness")
    level = query.get("level", "weak").lower() or "weak"
    if level == "auto":
        level = "weak"  # every configured node is a voter
    if level not in LEVELS:
        raise BadRequest(f"invalid level {query.get('level')!r}: use none, weak, linearizable or strong")
    timeout = durations["timeout"]
    linearizable = durations["linearizable_timeout"]
    if level == "linearizable" and linearizable:
        timeout = min(timeout, linearizable) if timeout else linearizable
    return Params(
        pretty="pretty" in query, timings="timings" in query, transaction="transaction" in query,
        associative="associative" in query, blob_array="blob_array" in query,
        raft_index="raft_index" in query, redirect="redirect" in query,
        qualify_columns="qualify_columns" in query, norwrandom="norwrandom" in query,
        norwtime="norwtime" in query, noparse="noparse" in query, queue="queue" in query,
        wait="wait" in query,
        noleader="noleader" in query, freshness=durations["freshness"],
        freshness_strict="freshness_strict" in query, level=level, timeout=timeout,
        db_timeout=durations["db_timeout"],
    )
