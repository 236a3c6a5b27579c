"""Time-typed column values rendered as go-sqlite3 + Go's Time.MarshalText render them."""

from __future__ import annotations

import pytest

from zraft.store import gotime


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("2004-02-14", "2004-02-14T00:00:00Z"),
        ("2004-02-14 07:15:00", "2004-02-14T07:15:00Z"),
        ("2021-10-22 19:39:32.016087", "2021-10-22T19:39:32.016087Z"),
        ("2021-10-22T19:39:32Z", "2021-10-22T19:39:32Z"),
        ("2021-10-22 19:39:32.500+02:00", "2021-10-22T19:39:32.5+02:00"),
        ("2021-10-22 19:39:32-05:30", "2021-10-22T19:39:32-05:30"),
        ("2021-10-22 19:39:32+00:00", "2021-10-22T19:39:32Z"),
        ("2021-10-22 19:39", "2021-10-22T19:39:00Z"),
        ("2021-10-22 7:05:09", "2021-10-22T07:05:09Z"),
        ("2021-10-22 19:39:32.1234567891", "2021-10-22T19:39:32.123456789Z"),
        ("2024-02-29", "2024-02-29T00:00:00Z"),
        ("2023-02-29", gotime.ZERO_TIME),
        ("2021-10-22 24:00:00", gotime.ZERO_TIME),
        ("2021-1-2", gotime.ZERO_TIME),
        ("2021-10-22 19:39+02:00", gotime.ZERO_TIME),
        ("yesterday", gotime.ZERO_TIME),
        ("", gotime.ZERO_TIME),
    ],
)
def test_text(text: str, rendered: str) -> None:
    assert gotime.from_text(text) == rendered


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59Z"),
        (1_700_000_000, "2023-11-14T22:13:20Z"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
        (-1_700_000_000_000, "1916-02-18T01:46:40Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),
    ],
)
def test_unix(value: int, rendered: str) -> None:
    assert gotime.from_unix(value) == rendered


def test_unix_outside_marshal_range() -> None:
    with pytest.raises(ValueError, match="year outside of range"):
        gotime.from_unix(253_402_300_800)
