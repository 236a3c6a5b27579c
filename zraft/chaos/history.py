"""History format for the chaos suite: JSON lines of invocations and completions.

One line is one *event*::

    {"process": 3, "type": "invoke", "f": "write", "key": "k1", "value": 7, "time": 12.5}

``type`` is ``invoke`` for the start of an operation and ``ok`` / ``fail`` / ``info``
for its end: ``fail`` means the operation certainly did not take effect, ``info`` that
its outcome is unknown (it may have taken effect at any moment after the invocation,
or never). Lines are written in real-time order by a single recorder, so ``time`` never
decreases along the file.

The checker works on *operations*, i.e. invocations paired with their completions, so
this module also validates events and pairs them (a process has at most one outstanding
operation; one never completed is an ``info`` with an infinite return time).
"""

from __future__ import annotations

import json
import math
import threading
import time as _time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, TypeAlias, cast

JSON: TypeAlias = "None | bool | int | float | str | list[JSON] | dict[str, JSON]"
Process: TypeAlias = "int | str"
Key: TypeAlias = "int | str | None"
EventType = Literal["invoke", "ok", "fail", "info"]
Outcome = Literal["ok", "fail", "info"]

EVENT_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})
FUNCTIONS: frozenset[str] = frozenset({"read", "write", "cas", "add", "transfer"})
REQUIRED_FIELDS: tuple[str, ...] = ("process", "type", "f", "time")


class HistoryError(ValueError):
    """A malformed history; says which line and why so a bad recorder is easy to fix."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(where + message)


@dataclass(frozen=True, slots=True)
class Event:
    """One validated JSON line."""

    process: Process
    type: EventType
    f: str
    key: Key
    value: JSON
    time: float
    line: int | None = None

    def to_json(self) -> dict[str, JSON]:
        """The wire form; ``line`` is reader bookkeeping and is not written."""
        return {"process": self.process, "type": self.type, "f": self.f,
                "key": self.key, "value": self.value, "time": self.time}


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion.

    ``value`` is what the client asked for (write value, ``[expected, new]`` of a cas,
    added element, transfer); ``result`` is what the completion carried (the value read).
    ``ret`` is ``math.inf`` for ``info`` operations: they may take effect arbitrarily late.
    """

    index: int
    process: Process
    f: str
    key: Key
    outcome: Outcome
    value: JSON
    result: JSON
    call: float
    ret: float

    def describe(self) -> str:
        """Short human form for error reports."""
        shown = self.result if self.f == "read" else self.value
        end = "inf" if math.isinf(self.ret) else f"{self.ret:g}"
        return (f"#{self.index} p{self.process} {self.f} {json.dumps(shown)} "
                f"{self.outcome} [{self.call:g}, {end}]")


# --------------------------------------------------------------------------- writing


class HistoryWriter:
    """Appends events as JSON lines, in real-time order, from any number of threads.

    The timestamp is taken under the lock, so the file order and the ``time`` order agree
    even when client threads race; that is what lets the reader insist on monotonic time.
    """

    def __init__(self, path: str | Path, clock: Iterable[float] | None = None) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._clock: Iterator[float] | None = iter(clock) if clock is not None else None

    def _now(self) -> float:
        return next(self._clock) if self._clock is not None else _time.monotonic()

    def record(self, process: Process, type_: EventType, f: str,
               key: Key = None, value: JSON = None) -> Event:
        """Write one event stamped with the current time and return it."""
        with self._lock:
            event = Event(process, type_, f, key, value, self._now())
            self._file.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
            self._file.flush()
        return event

    def invoke(self, process: Process, f: str, key: Key = None, value: JSON = None) -> Event:
        """Record the start of an operation (before the request is sent)."""
        return self.record(process, "invoke", f, key, value)

    def complete(self, process: Process, outcome: Outcome, f: str,
                 key: Key = None, value: JSON = None) -> Event:
        """Record the end of an operation (after the response, or the give-up)."""
        return self.record(process, outcome, f, key, value)

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def write_events(path: str | Path, events: Iterable[Event]) -> None:
    """Write prepared events verbatim (tests and replays supply their own times)."""
    with open(path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------- validation


def _fail(line: int | None, message: str) -> HistoryError:
    return HistoryError(line, message)


def _check_scalar(value: object, line: int | None, what: str) -> None:
    if isinstance(value, (list, dict)):
        raise _fail(line, f"{what} must be a JSON scalar, got {json.dumps(value)}")


def _check_value(f: str, type_: str, value: object, line: int | None) -> None:
    """Per-function shape rules, so a checker never meets a value it cannot interpret."""
    if f == "cas" and type_ == "invoke":
        if not (isinstance(value, list) and len(value) == 2):
            raise _fail(line, f"cas value must be [expected, new], got {json.dumps(value)}")
        _check_scalar(value[0], line, "cas expected")
        _check_scalar(value[1], line, "cas new")
    elif f in ("write", "add") and type_ == "invoke":
        _check_scalar(value, line, f"{f} value")
    elif f == "transfer" and type_ == "invoke":
        _check_transfer(value, line)
    elif f == "read" and type_ == "ok" and isinstance(value, dict):
        _check_balances(value, line)


def _check_transfer(value: object, line: int | None) -> None:
    if not isinstance(value, dict) or set(value) != {"from", "to", "amount"}:
        raise _fail(line, "transfer value must be {\"from\", \"to\", \"amount\"}")
    amount = value["amount"]
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise _fail(line, "transfer amount must be a number")


def _check_balances(value: Mapping[str, object], line: int | None) -> None:
    for account, balance in value.items():
        if isinstance(balance, bool) or not isinstance(balance, (int, float)):
            raise _fail(line, f"balance of account {account!r} must be a number")


def parse_event(raw: object, line: int | None = None) -> Event:
    """Validate one decoded JSON object and turn it into an :class:`Event`."""
    if not isinstance(raw, dict):
        raise _fail(line, "an event must be a JSON object")
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise _fail(line, f"missing field(s): {', '.join(missing)}")
    unknown = set(raw) - {"process", "type", "f", "key", "value", "time"}
    if unknown:
        raise _fail(line, f"unknown field(s): {', '.join(sorted(unknown))}")
    process, type_, f, stamp = raw["process"], raw["type"], raw["f"], raw["time"]
    if isinstance(process, bool) or not isinstance(process, (int, str)):
        raise _fail(line, "process must be an integer or a string")
    if type_ not in EVENT_TYPES:
        raise _fail(line, f"type must be one of {sorted(EVENT_TYPES)}, got {type_!r}")
    if f not in FUNCTIONS:
        raise _fail(line, f"f must be one of {sorted(FUNCTIONS)}, got {f!r}")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        raise _fail(line, "time must be a finite number")
    key = raw.get("key")
    if isinstance(key, bool) or not (key is None or isinstance(key, (int, str))):
        raise _fail(line, "key must be an integer, a string or null")
    value = cast(JSON, raw.get("value"))
    _check_value(f, type_, value, line)
    return Event(process, cast(EventType, type_), f, key, value, float(stamp), line)


def read_events(path: str | Path) -> list[Event]:
    """Parse a .jsonl file; blank lines are allowed, anything else malformed is rejected."""
    events: list[Event] = []
    with open(path, encoding="utf-8") as source:
        for number, text in enumerate(source, start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise HistoryError(number, f"invalid JSON: {exc.msg}") from None
            events.append(parse_event(raw, number))
    return events


# --------------------------------------------------------------------------- pairing


def pair(events: Sequence[Event]) -> list[Operation]:
    """Pair each invocation with its process's next completion.

    Rejects: time going backwards, a second invocation while one is outstanding, a
    completion with nothing outstanding or for a different f/key. Invocations left open at
    the end become ``info`` operations with ``ret = inf``. Operations are returned in
    invocation order, which is also the order the checkers number them in.
    """
    open_ops: dict[Process, tuple[int, Event]] = {}
    done: dict[int, Operation] = {}
    invokes: list[Event] = []
    last_time = -math.inf
    for event in events:
        if event.time < last_time:
            raise HistoryError(event.line, f"time {event.time:g} goes backwards (after {last_time:g})")
        last_time = event.time
        if event.type == "invoke":
            _open(open_ops, invokes, event)
        else:
            index, call = _close(open_ops, event)
            done[index] = _operation(index, call, event)
    for index, call in open_ops.values():
        done[index] = _operation(index, call, None)
    return [done[i] for i in range(len(invokes))]


def _open(open_ops: dict[Process, tuple[int, Event]], invokes: list[Event], event: Event) -> None:
    if event.process in open_ops:
        raise HistoryError(event.line, f"process {event.process!r} invoked a second operation "
                                       "while one is still outstanding")
    open_ops[event.process] = (len(invokes), event)
    invokes.append(event)


def _close(open_ops: dict[Process, tuple[int, Event]], event: Event) -> tuple[int, Event]:
    if event.process not in open_ops:
        raise HistoryError(event.line, f"completion for process {event.process!r} "
                                       "which has no outstanding invocation")
    index, call = open_ops.pop(event.process)
    if (call.f, call.key) != (event.f, event.key):
        raise HistoryError(event.line, f"completion {event.f}/{event.key!r} does not match "
                                       f"invocation {call.f}/{call.key!r}")
    return index, call


def _operation(index: int, call: Event, end: Event | None) -> Operation:
    """Build the paired operation; a missing completion is an unknown outcome."""
    if end is None or end.type == "info":
        return Operation(index, call.process, call.f, call.key, "info", call.value, None,
                         call.time, math.inf)
    outcome = cast(Outcome, end.type)
    result = end.value if call.f == "read" else None
    return Operation(index, call.process, call.f, call.key, outcome, call.value, result,
                     call.time, end.time)


def load_history(path: str | Path) -> list[Operation]:
    """Read, validate and pair a history file."""
    return pair(read_events(path))
