"""Helpers for the SQL rewriter tests: a fixed instant, a SQLite VFS whose clock we set."""

from __future__ import annotations

import random
from typing import Any

import apsw

CLOCK_NS = 1_700_000_000_123_456_789           # 2023-11-14 22:13:20.123456789 UTC
CLOCK_MS = CLOCK_NS // 1_000_000
CLOCK_SUBSEC = "2023-11-14 22:13:20.123"
JD_EPOCH_MS = 210_866_760_000_000
VFS_NAME = "zraft-test-fixed-clock"


class FixedClockVFS(apsw.VFS):
    """The default VFS with its clock replaced, so SQLite's own 'now' is a value we choose."""

    def __init__(self, name: str) -> None:
        self.unix_ms = CLOCK_MS
        super().__init__(name, "")

    def xCurrentTimeInt64(self) -> int:
        return self.unix_ms + JD_EPOCH_MS

    def xCurrentTime(self) -> float:
        return (self.unix_ms + JD_EPOCH_MS) / 86_400_000


def seeded() -> random.Random:
    return random.Random(20240601)


def fixed_clock() -> int:
    return CLOCK_NS


def one_row(sql: str, conn: apsw.Connection | None = None) -> tuple[Any, ...]:
    conn = conn or apsw.Connection(":memory:")
    rows = conn.execute(sql).fetchall()
    assert len(rows) == 1, rows
    return tuple(rows[0])
