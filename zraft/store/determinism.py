"""What makes the writer connection deterministic: the entry's clock, its random numbers, UTC.

SQLite reaches the outside world for three things that could differ between nodes applying
the same entry: the time, random numbers and the time zone. Each is routed to the entry's
stamp (zraft.store.command, version 3) on the writer connection only; readers keep the real
ones.

- **Time.** Every 'now' SQLite evaluates (``date()``/``time()``/``datetime()``/
  ``julianday()``/``unixepoch()``/``strftime()``/``timediff()`` with 'now' or no argument,
  ``CURRENT_TIMESTAMP``/``CURRENT_DATE``/``CURRENT_TIME``, in DEFAULTs, triggers, views, bound
  parameters or computed strings alike) comes from ``sqlite3StmtCurrentTime``, which asks the
  *connection's* VFS (``xCurrentTimeInt64``). `EntryClock` is a VFS that inherits everything
  from the default one ("unix") and answers the clock with the current entry's ``time_ms``.
- **Randomness.** ``random()`` and ``randomblob()`` call SQLite's process-wide PRNG, which is
  seeded once from the *default* VFS (never from a connection's own VFS, so a VFS cannot
  seed it) and is shared with every other connection of the process (the readers' own
  ``random()`` would shift the sequence). So the writer overrides the two SQL functions with
  `EntryRandom`: a SHAKE-256 stream keyed by (the entry's seed, the statement's position in
  the entry), one counter per call. Results do not depend on how entries are batched, and
  anyone can recompute them.
- **Time zone.** The 'localtime' and 'utc' modifiers call the C library's ``localtime_r``
  with the process's zone. `force_utc` makes the store process run in UTC (``TZ=UTC`` and
  ``tzset()``), before any connection is opened, so that nodes in different zones agree
  (both modifiers are then the identity).

Unstamped entries (command versions 1 and 2, written before version 3 existed) are applied as
they always were: the clock is the real one (the VFS passes through to "unix") and the two
functions draw from ``os.urandom``.

``ZRAFT_TEST_NONDETERMINISTIC_APPLY=1`` in the environment of the store process turns all of
this off (no clock VFS, SQLite's own ``random()``/``randomblob()``, the host's zone). It
exists for tests only, so that a differential test can show that it finds the divergence
the overrides prevent; never set it on a real node.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import time

import apsw

NONDETERMINISTIC_ENV = "ZRAFT_TEST_NONDETERMINISTIC_APPLY"
"""Test-only switch: "1" makes the writer apply without the overrides of this module."""

UNIX_EPOCH_JD_MS = 210_866_760_000_000
"""The Unix epoch as a Julian day in milliseconds (SQLite's iJD for 1970-01-01 00:00:00)."""
_MS_PER_DAY = 86_400_000
_I64_MAX = (1 << 63) - 1
_I64_MIN = -(1 << 63)
_LEADING_INT = re.compile(r"\s*([+-]?\d+)")
_names = itertools.count(1)


def deterministic_apply() -> bool:
    """False only under the test switch ZRAFT_TEST_NONDETERMINISTIC_APPLY=1."""
    return os.environ.get(NONDETERMINISTIC_ENV, "") != "1"


def force_utc() -> None:
    """Run this process in UTC, so that 'localtime'/'utc' mean the same on every node."""
    os.environ["TZ"] = "UTC"
    time.tzset()


class EntryClock(apsw.VFS):
    """A VFS for the writer connection: the default VFS for everything, except that the clock
    reads ``now_ms`` (the current entry's stamp) when it is set.

    Only the two clock methods are Python; file I/O goes through apsw's inheritance to the
    default VFS (measured: no visible change in apply throughput, see DESIGN.md).
    """

    def __init__(self) -> None:
        self.vfs_name = f"zraft-entry-clock-{os.getpid()}-{next(_names)}"
        super().__init__(self.vfs_name, base="")
        self.now_ms: int | None = None
        """Unix ms of the entry being applied; None: the real clock (unstamped entries)."""

    def xCurrentTimeInt64(self) -> int:  # noqa: N802 (SQLite's name)
        if self.now_ms is None:
            return int(super().xCurrentTimeInt64())
        return self.now_ms + UNIX_EPOCH_JD_MS

    def xCurrentTime(self) -> float:  # noqa: N802
        if self.now_ms is None:
            return float(super().xCurrentTime())
        return (self.now_ms + UNIX_EPOCH_JD_MS) / _MS_PER_DAY


class EntryRandom:
    """``random()`` and ``randomblob(N)`` for the writer: a deterministic stream per statement.

    Draw ``k`` (counting from 0) of the statement at position ``p`` of an entry with seed ``s``
    is ``SHAKE-256(b"zraft-random-v1" | s as 8 bytes BE | p as 4 bytes BE | k as 8 bytes BE)``:
    its first 8 bytes (little endian, signed, with SQLite's mapping of negatives) for
    ``random()``, its first N bytes for ``randomblob(N)``.
    """

    def __init__(self, conn: apsw.Connection) -> None:
        self._max_length = conn.limit(apsw.SQLITE_LIMIT_LENGTH)
        self._seed: int | None = None
        self._position = 0
        self._prefix = b""
        self._draws = 0
        conn.create_scalar_function("random", self.random, 0)
        conn.create_scalar_function("randomblob", self.randomblob, 1)

    def statement(self, seed: int | None, position: int) -> None:
        """Start the stream of the statement at ``position`` (None: real randomness)."""
        self._seed, self._position, self._prefix, self._draws = seed, position, b"", 0

    def _bytes(self, n: int) -> bytes:
        if self._seed is None:
            return os.urandom(n)
        if not self._prefix:  # built on the first draw: most statements draw nothing
            self._prefix = b"zraft-random-v1" + self._seed.to_bytes(8, "big") + self._position.to_bytes(4, "big")
        draw = self._draws
        self._draws += 1
        return hashlib.shake_256(self._prefix + draw.to_bytes(8, "big")).digest(n)

    def random(self, *_: apsw.SQLiteValue) -> int:
        """SQL ``random()`` (registered with no argument)."""
        value = int.from_bytes(self._bytes(8), "little", signed=True)
        if value < 0:  # SQLite's own mapping: never -2**63, whose abs() overflows
            value = -(value & _I64_MAX)
        return value

    def randomblob(self, *args: apsw.SQLiteValue) -> bytes:
        """SQL ``randomblob(N)`` (registered with one argument)."""
        n = max(_int64(args[0]), 1)
        if n > self._max_length:
            raise apsw.TooBigError("string or blob too big")
        return self._bytes(n)


def _int64(value: object) -> int:
    """``sqlite3_value_int64`` of a function argument, as SQLite converts it."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        if value >= 9.223372036854775807e18:
            return _I64_MAX
        if value <= -9.223372036854775808e18:
            return _I64_MIN
        return int(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        return max(_I64_MIN, min(_I64_MAX, int(match.group(1)))) if match else 0
    return 0
