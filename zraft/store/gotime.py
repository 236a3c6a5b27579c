"""Date/time values rendered exactly as rqlite renders them.

rqlite reads SQLite through go-sqlite3, which turns any value in a column whose declared
type is ``date``, ``datetime`` or ``timestamp`` into a Go ``time.Time``; rqlite then emits
it with ``Time.MarshalText`` (RFC 3339, nanoseconds without trailing zeros). Clients see
that string, so zraft must produce the same one. The rules, from go-sqlite3
``SQLiteRows.nextSyncLocked`` and Go's ``time`` package:

- INTEGER: Unix seconds, or Unix milliseconds when ``|v| > 1e12``; shown in UTC.
- TEXT: one trailing ``Z`` is dropped, then these layouts are tried in order
  (``SQLiteTimestampFormats``): ``YYYY-MM-DD[ T]HH:MM:SS[.frac]±hh:mm``,
  ``YYYY-MM-DD[ T]HH:MM:SS[.frac]``, ``YYYY-MM-DD[ T]HH:MM``, ``YYYY-MM-DD``; without an
  offset the value is UTC. If none parses, the result is Go's zero time.
- A zero offset prints as ``Z``, any other as ``±hh:mm`` with the wall clock unchanged.

Python's ``datetime`` is not used for text: it cannot hold nanoseconds or year 0.
"""

from __future__ import annotations

import re

ZERO_TIME = "0001-01-01T00:00:00Z"
"""What go-sqlite3 returns for a time column whose text matches no layout."""

_TEXT = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[ T](?P<h>\d{1,2}):(?P<mi>\d{2})"
    r"(?::(?P<s>\d{2})(?:[.,](?P<f>\d+))?(?:(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))?)?)?"
)
_MS_THRESHOLD = 10**12
_DAY = 86_400


def from_text(text: str) -> str:
    """Render a TEXT value of a time-typed column (zero time when Go could not parse it)."""
    if text.endswith("Z"):
        text = text[:-1]
    m = _TEXT.fullmatch(text)
    if m is None:
        return ZERO_TIME
    y, mo, d = int(m["y"]), int(m["mo"]), int(m["d"])
    h, mi, s = int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0)
    oh, om = int(m["oh"] or 0), int(m["om"] or 0)
    if not _valid(y, mo, d, h, mi, s) or oh > 24 or om > 60:
        return ZERO_TIME
    nanos = int((m["f"] or "0")[:9].ljust(9, "0"))
    offset = (oh * 60 + om) * (-1 if m["sign"] == "-" else 1)
    return _format(y, mo, d, h, mi, s, nanos, offset)


def from_unix(value: int) -> str:
    """Render an INTEGER value of a time-typed column; ValueError outside years 0..9999."""
    if value > _MS_THRESHOLD or value < -_MS_THRESHOLD:
        seconds, millis = divmod(value, 1000)
        nanos = millis * 1_000_000
    else:
        seconds, nanos = value, 0
    days, rem = divmod(seconds, _DAY)
    y, mo, d = _civil_from_days(days)
    if not 0 <= y <= 9999:
        raise ValueError("Time.MarshalText: year outside of range [0,9999]")
    return _format(y, mo, d, rem // 3600, rem // 60 % 60, rem % 60, nanos, 0)


def _format(y: int, mo: int, d: int, h: int, mi: int, s: int, nanos: int, offset_min: int) -> str:
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    if offset_min == 0:
        zone = "Z"
    else:
        sign = "-" if offset_min < 0 else "+"
        zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"


def _valid(y: int, mo: int, d: int, h: int, mi: int, s: int) -> bool:
    if not 1 <= mo <= 12 or h > 23 or mi > 59 or s > 59:
        return False
    return 1 <= d <= _days_in_month(y, mo)


def _days_in_month(y: int, mo: int) -> int:
    if mo == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if mo in (4, 6, 9, 11) else 31


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    mo = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if mo <= 2 else 0)
    return y, mo, d
