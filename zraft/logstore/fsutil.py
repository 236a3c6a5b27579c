"""Thin wrappers over the system calls durability depends on.

Kept apart so the rules live in one place: data reaches the disk only through fdatasync/fsync,
and a created, renamed or deleted file is durable only once its directory is fsynced.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""The errnos of a full disk or an exhausted quota: space may come back."""


def datasync(fd: int) -> None:
    """Flush file data (and the size, if it grew) without forcing unrelated metadata."""
    _fdatasync(fd)


def fsync_dir(directory: Path) -> None:
    """Make creations, renames and deletions inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until every byte is written: a short write is legal for large buffers."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read exactly `size` bytes, or fewer only at end of file."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def preallocate(fd: int, size: int) -> None:
    """Reserve blocks up to `size` so later fdatasyncs need not journal block allocation
    (measured about 1.5x faster on ext4). Best effort: skipped where unsupported, and when
    the disk has no room for the whole reservation (the writes then take what space there
    is, and a full disk shows up as ENOSPC on the write that needs it)."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, *NO_SPACE):
            raise



def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()
