"""Segment files: naming, the per-file header, scanning with torn-tail detection, appending.

File layout: a 24-byte header (magic, format version, sequence number, CRC of the header),
then frames (see records.py). The first frame is always a CHECKPOINT. Unused space at the end
is zeros (preallocated, or left by a crash that extended the file before writing its data).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from zraft.logstore import fsutil
from zraft.logstore.errors import LogCorruptError
from zraft.logstore.records import FRAME_HEADER, Frame, RecordFormatError, RecordType, read_frame

log = logging.getLogger(__name__)

MAGIC = b"ZRAFTLOG"
VERSION = 1
FILE_HEADER = struct.Struct("<8sHHQI")  # magic, version, reserved, seq, crc32 of the rest
_NAME = re.compile(r"^(\d{16})\.seg$")
_FRAME_TYPE_BYTES = re.compile(b"[" + bytes(int(t) for t in RecordType) + b"]")


def segment_name(seq: int) -> str:
    return f"{seq:016d}.seg"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(seq, path) of every segment file, oldest first."""
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def encode_file_header(seq: int) -> bytes:
    head = FILE_HEADER.pack(MAGIC, VERSION, 0, seq, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def _header_problem(data: bytes, seq: int) -> str | None:
    if len(data) < FILE_HEADER.size:
        return "file shorter than its header"
    magic, version, _reserved, file_seq, crc = FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        return f"bad magic {magic!r}"
    if zlib.crc32(data[: FILE_HEADER.size - 4]) != crc:
        return "header checksum mismatch"
    if version != VERSION:
        return f"unsupported format version {version}"
    if file_seq != seq:
        return f"header says segment {file_seq}, file name says {seq}"
    return None


# -- scanning -----------------------------------------------------------------------------


@dataclass(slots=True)
class SegmentScan:
    """What a segment holds. `torn_at` is where an unacknowledged partial write begins (only
    ever in the last segment); `discard` means the segment's creation itself was torn."""

    seq: int
    path: Path
    frames: list[Frame] = field(default_factory=list)
    end: int = FILE_HEADER.size
    torn_at: int | None = None
    torn_reason: str = ""
    discard: bool = False
    data: bytes = b""


def _all_zero(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


def _valid_frame_after(data: bytes, start: int) -> bool:
    """Whether any checksum-valid frame begins at or after `start`.

    This separates a torn tail (garbage, then nothing but zeros) from damage in the middle
    (garbage, then records we once wrote and acknowledged). Candidates are found by their
    type byte, so the scan is cheap even over long runs of zeros.
    """
    stop = len(data.rstrip(b"\0"))
    type_offset = FRAME_HEADER.size - 1
    for match in _FRAME_TYPE_BYTES.finditer(data, start + type_offset, stop):
        if isinstance(read_frame(data, match.start() - type_offset), Frame):
            return True
    return False


def scan_segment(seq: int, path: Path, is_last: bool) -> SegmentScan:
    """Verify and index one segment; raise LogCorruptError for anything but a torn tail."""
    data = fsutil.read_file(path)
    scan = SegmentScan(seq, path, data=data)
    problem = _header_problem(data, seq)
    if problem is not None:
        return _torn_or_corrupt(scan, 0, problem, is_last)
    try:
        _scan_frames(scan, is_last)
    except RecordFormatError as exc:
        raise LogCorruptError(path, scan.end, str(exc)) from None
    if not scan.frames or scan.frames[0].rtype != RecordType.CHECKPOINT:
        return _missing_checkpoint(scan, is_last)
    return scan


def _scan_frames(scan: SegmentScan, is_last: bool) -> None:
    data, offset = scan.data, FILE_HEADER.size
    while True:
        found = read_frame(data, offset)
        if isinstance(found, Frame):
            scan.frames.append(found)
            offset += found.size
            scan.end = offset
            continue
        if offset == len(data) or _all_zero(data, offset):
            return
        _torn_or_corrupt(scan, offset, found, is_last)
        return


def _torn_or_corrupt(scan: SegmentScan, offset: int, problem: str, is_last: bool) -> SegmentScan:
    if not is_last or _valid_frame_after(scan.data, offset + 1):
        raise LogCorruptError(scan.path, offset, problem)
    scan.torn_at, scan.torn_reason = offset, problem
    scan.discard = offset < FILE_HEADER.size
    return scan


def _missing_checkpoint(scan: SegmentScan, is_last: bool) -> SegmentScan:
    if scan.frames:
        raise LogCorruptError(scan.path, scan.frames[0].offset, "first record is not a checkpoint")
    if not is_last:
        raise LogCorruptError(scan.path, FILE_HEADER.size, "segment has no checkpoint")
    scan.discard = True  # created but its checkpoint never fully written: nothing to lose
    scan.torn_reason = scan.torn_reason or "segment has no checkpoint"
    return scan


# -- writing ------------------------------------------------------------------------------


class SegmentWriter:
    """The one segment being appended to. Appends go to `tail` with pwrite so the
    preallocated zeros beyond it stay untouched until real data lands there."""

    def __init__(self, fd: int, seq: int, path: Path, tail: int, data_start: int) -> None:
        self.fd = fd
        self.seq = seq
        self.path = path
        self.tail = tail
        self.synced = tail
        """Bytes [0, synced) are known durable (the last sync succeeded); what lies beyond
        may be lost by a crash, or may be in the page cache only after a failed fsync."""
        self.data_start = data_start
        """Offset just after the checkpoint: a segment with tail == data_start holds no
        records of its own, so it is never rolled over (a huge batch may overfill it)."""

    @classmethod
    def create(cls, directory: Path, seq: int, checkpoint: bytes, prealloc_size: int) -> SegmentWriter:
        """A new durable segment: header and checkpoint synced, directory entry synced."""
        path = directory / segment_name(seq)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fsutil.preallocate(fd, prealloc_size)
            fsutil.pwrite_all(fd, encode_file_header(seq) + checkpoint, 0)
            os.fsync(fd)
            fsutil.fsync_dir(directory)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)  # ours (O_EXCL) and never complete: no half segment stays
            raise
        end = FILE_HEADER.size + len(checkpoint)
        return cls(fd, seq, path, end, end)

    @classmethod
    def reopen(cls, scan: SegmentScan, prealloc_size: int) -> SegmentWriter:
        """Continue the last segment after recovery, cutting a torn tail first."""
        fd = os.open(scan.path, os.O_RDWR)
        try:
            if scan.torn_at is not None:
                os.ftruncate(fd, scan.end)
            fsutil.preallocate(fd, prealloc_size)
            if scan.torn_at is not None or len(scan.data) < prealloc_size:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, scan.seq, scan.path, scan.end, scan.frames[0].offset + scan.frames[0].size)

    def has_records(self) -> bool:
        return self.tail > self.data_start

    def append(self, data: bytes) -> int:
        """Write `data` at the tail; returns its offset. Not durable until sync()."""
        offset = self.tail
        fsutil.pwrite_all(self.fd, data, offset)
        self.tail += len(data)
        return offset

    def sync(self) -> None:
        fsutil.datasync(self.fd)
        self.synced = self.tail

    def drop_unsynced(self) -> None:
        """After a failed write or sync: cut the file back to what is known durable, so that
        nothing a crash could have lost (a partial batch, pages a failed fsync dropped) is
        ever read back as if it had been persisted."""
        os.ftruncate(self.fd, self.synced)
        os.fsync(self.fd)
        self.tail = self.synced

    def seal(self) -> None:
        """Before rolling over: cut the unused preallocated space and make everything
        durable, so a later segment's existence implies this one is complete."""
        os.ftruncate(self.fd, self.tail)
        os.fsync(self.fd)
        self.synced = self.tail


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("%s: cannot remove an incomplete new segment: %s", path, exc)
