"""One instant, spelled as the SQL literals that stand in for SQLite's 'now'.

Why integer milliseconds: SQLite's 'now' is the statement's clock reading truncated to
whole milliseconds (the unix VFS divides gettimeofday's microseconds by 1000), and every
date function works on an integer millisecond Julian day (`iJD`). Holding exactly that
integer and converting with exact arithmetic is what lets a rewritten statement produce the
same instant to the millisecond ('subsec'), which rqlite's 6-decimal Julian day cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

JD_EPOCH_MS = 210_866_760_000_000   # Julian day of 1970-01-01T00:00Z, in milliseconds
MS_PER_DAY = 86_400_000
_UNIX_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Instant:
    """A UTC instant in whole milliseconds since the Unix epoch."""

    unix_ms: int

    @classmethod
    def from_ns(cls, unix_ns: int) -> Instant:
        """Truncate a nanosecond clock reading the way SQLite truncates its own clock."""
        return cls(unix_ns // 1_000_000)

    def julian_day(self) -> str:
        """A numeric literal SQLite reads back as this exact millisecond.

        SQLite turns a numeric time value r into iJD = (i64)(r * 86400000 + 0.5). The
        shortest repr of the correctly rounded quotient is within 1e-4 ms of the true value
        for any date this side of year 9999, far inside the +-0.5 ms that rounding forgives.
        """
        return repr((self.unix_ms + JD_EPOCH_MS) / MS_PER_DAY)

    def iso_utc(self) -> str:
        """A string literal 'YYYY-MM-DD HH:MM:SS.SSSZ' for this instant.

        Used instead of julian_day() when a modifier would read a number differently from
        'now' ('utc' converts a number as if it were local time; 'unixepoch', 'julianday'
        and 'auto' reinterpret a number). The 'Z' marks it UTC, as 'now' is.
        """
        return f"'{self._ymd_hms()}.{self.unix_ms % 1000:03d}Z'"

    def current_timestamp(self) -> str:
        """CURRENT_TIMESTAMP as SQLite prints it: 'YYYY-MM-DD HH:MM:SS' (UTC, truncated)."""
        return f"'{self._ymd_hms()}'"

    def current_date(self) -> str:
        """CURRENT_DATE as SQLite prints it: 'YYYY-MM-DD' (UTC)."""
        return f"'{self._ymd_hms()[:10]}'"

    def current_time(self) -> str:
        """CURRENT_TIME as SQLite prints it: 'HH:MM:SS' (UTC, truncated)."""
        return f"'{self._ymd_hms()[11:]}'"

    def _ymd_hms(self) -> str:
        """'YYYY-MM-DD HH:MM:SS', zero-padded as SQLite pads (years 1 to 9999)."""
        t = _UNIX_EPOCH + timedelta(milliseconds=self.unix_ms)
        return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
