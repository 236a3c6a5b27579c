"""Reading entries back from segments through the in-memory index.

Runs of entries in the same segment are fetched with one pread and every frame is checked
again (CRC, type, index): data damaged after load must surface as an error, never as a
wrong entry handed to Raft.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zraft.logstore import fsutil
from zraft.logstore.errors import LogCorruptError
from zraft.logstore.index import LogIndex
from zraft.logstore.records import Frame, RecordFormatError, RecordType, decode_entry, read_frame
from zraft.raft.types import Entry

FileLookup = Callable[[int], tuple[int, Path]]
"""Segment seq -> (readable fd, path)."""


def read_entries(index: LogIndex, lo: int, hi: int, lookup: FileLookup) -> list[Entry]:
    out: list[Entry] = []
    start = lo
    while start < hi:
        stop = _run_end(index, start, hi)
        out.extend(_read_run(index, start, stop, lookup))
        start = stop
    return out


def _run_end(index: LogIndex, start: int, hi: int) -> int:
    """First index after `start` that lives in another segment (or hi)."""
    seqs, base = index.seqs, index.known_from
    seq = seqs[start - base]
    stop = start + 1
    while stop < hi and seqs[stop - base] == seq:
        stop += 1
    return stop


def _read_run(index: LogIndex, start: int, stop: int, lookup: FileLookup) -> list[Entry]:
    first, last = index.location(start), index.location(stop - 1)
    fd, path = lookup(first.seq)
    buf = fsutil.pread_exact(fd, last.offset + last.size - first.offset, first.offset)
    out = []
    for i in range(start, stop):
        where = index.location(i)
        entry = _decode(buf, where.offset - first.offset, where.size, i)
        if isinstance(entry, str):
            raise LogCorruptError(path, where.offset, f"reading entry {i}: {entry}")
        out.append(entry)
    return out


def _decode(buf: bytes, rel: int, size: int, expected: int) -> Entry | str:
    try:
        found = read_frame(buf, rel)
        if not isinstance(found, Frame):
            return found
        if found.rtype != RecordType.ENTRY or found.size != size:
            return f"found a type {found.rtype} record of {found.size} bytes"
        entry = decode_entry(found.payload(buf))
    except RecordFormatError as exc:
        return str(exc)
    return entry if entry.index == expected else f"found entry {entry.index}"
