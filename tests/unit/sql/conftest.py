"""Fixtures for the SQL rewriter tests: a SQLite whose clock we set."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import apsw
import pytest

from tests.unit.sql.support import VFS_NAME, FixedClockVFS


@pytest.fixture(scope="session")
def fixed_vfs() -> Iterator[FixedClockVFS]:
    vfs = FixedClockVFS(VFS_NAME)
    yield vfs
    vfs.unregister()


@pytest.fixture
def sqlite_at(fixed_vfs: FixedClockVFS) -> Callable[[int], apsw.Connection]:
    """A fresh in-memory database whose 'now' is the given Unix time in milliseconds."""
    def connect(unix_ms: int) -> apsw.Connection:
        fixed_vfs.unix_ms = unix_ms
        return apsw.Connection(":memory:", vfs=VFS_NAME)
    return connect
