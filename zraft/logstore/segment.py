"""Segment files: naming, the per-file header, scanning with torn-tail detection, appending.

File layout: a 32-byte header (magic, format version, sequence number, a random salt, CRC of
the header), then frames (see records.py). The first frame is always a CHECKPOINT; each batch
written after a completed sync starts with a WATERMARK. Unused space at the end is zeros
(preallocated, or left by a crash that extended the file before writing its data).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zraft.logstore import fsutil
from zraft.logstore.errors import LogCorruptError
from zraft.logstore.records import (
    FRAME_HEADER,
    WATERMARK_SIGNATURE,
    WATERMARK_SIZE,
    Frame,
    RecordFormatError,
    RecordType,
    decode_watermark,
    encode_watermark,
    read_frame,
)

log = logging.getLogger(__name__)

MAGIC = b"ZRAFTLOG"
VERSION = 3
"""2 added the header salt and WATERMARK records; 3 added the vote floor to the checkpoint's
hard state. Version 2 segments are still read (their floor is none); version 1 segments are
refused: there were no deployed stores to upgrade, and reading them would need the old,
stricter recovery rules."""
READABLE_VERSIONS = (2, 3)
FILE_HEADER = struct.Struct("<8sHHQQI")  # magic, version, reserved, seq, salt, crc32 of the rest
_MAGIC_VERSION = struct.Struct("<8sH")
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


def encode_file_header(seq: int, salt: int) -> bytes:
    head = FILE_HEADER.pack(MAGIC, VERSION, 0, seq, salt, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def new_salt() -> int:
    return int.from_bytes(os.urandom(8), "little")


def read_header(data: bytes, seq: int, path: Path) -> tuple[int, int] | str:
    """The segment's (salt, format version), or why its header is unreadable (possibly a torn
    creation).

    A header with our magic and another version number is refused outright: that is a file
    written by another build, never a torn write, and deleting it as one would lose a log."""
    if len(data) >= _MAGIC_VERSION.size:
        magic, version = _MAGIC_VERSION.unpack_from(data)
        if magic == MAGIC and version not in READABLE_VERSIONS:
            raise LogCorruptError(path, 8, f"segment format version {version}; this build reads only "
                                  f"versions {READABLE_VERSIONS} (there is no upgrade path: start from a "
                                  "fresh log)")
    if len(data) < FILE_HEADER.size:
        return "file shorter than its header"
    magic, version, _reserved, file_seq, salt, crc = FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        return f"bad magic {magic!r}"
    if zlib.crc32(data[: FILE_HEADER.size - 4]) != crc:
        return "header checksum mismatch"
    if file_seq != seq:
        return f"header says segment {file_seq}, file name says {seq}"
    return int(salt), int(version)


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
    salt: int = 0
    version: int = VERSION


def _all_zero(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


def _valid_frame_after(data: bytes, start: int) -> bool:
    """Whether any checksum-valid frame begins at or after `start`.

    Used where a segment's creation may have been torn: creation is synced before anything
    else is written, so a damaged header or checkpoint followed by any valid frame is real
    damage. Candidates are found by their type byte, so the scan is cheap even over long runs
    of zeros.
    """
    stop = len(data.rstrip(b"\0"))
    type_offset = FRAME_HEADER.size - 1
    for match in _FRAME_TYPE_BYTES.finditer(data, start + type_offset, stop):
        if isinstance(read_frame(data, match.start() - type_offset), Frame):
            return True
    return False


def durable_claim_after(data: bytes, start: int, salt: int) -> int:
    """The highest offset that any trusted watermark at or after `start` says was durable
    (0 if there is none).

    Only a watermark that the writer itself put there counts: valid CRC, this segment's salt,
    its own offset recorded correctly, and a claim that does not reach past itself. Its bytes
    may never have been synced; that does not matter, because it only records fsyncs that had
    completed before it was written."""
    best = 0
    lead = FRAME_HEADER.size - len(WATERMARK_SIGNATURE)  # the CRC before length and type
    pos = data.find(WATERMARK_SIGNATURE, start + lead)
    while pos != -1:
        at = pos - lead
        found = read_frame(data, at)
        if isinstance(found, Frame):
            mark = decode_watermark(found.payload(data))
            if mark.salt == salt and mark.offset == at and mark.durable <= at:
                best = max(best, mark.durable)
        pos = data.find(WATERMARK_SIGNATURE, pos + 1)
    return best


def scan_segment(seq: int, path: Path, is_last: bool) -> SegmentScan:
    """Verify and index one segment; raise LogCorruptError for anything but a torn tail."""
    data = fsutil.read_file(path)
    scan = SegmentScan(seq, path, data=data)
    header = read_header(data, seq, path)
    if isinstance(header, str):
        return _torn_creation_or_corrupt(scan, 0, header, is_last)
    scan.salt, scan.version = header
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
            if found.rtype == RecordType.WATERMARK:
                _check_watermark(scan, found)
            scan.frames.append(found)
            offset += found.size
            scan.end = offset
            continue
        if offset == len(data) or _all_zero(data, offset):
            return
        if not scan.frames:  # the checkpoint itself: only its creation can have been torn
            _torn_creation_or_corrupt(scan, offset, found, is_last)
        else:
            _torn_tail_or_corrupt(scan, offset, found, is_last)
        return


def _check_watermark(scan: SegmentScan, frame: Frame) -> None:
    mark = decode_watermark(frame.payload(scan.data))
    if mark.salt != scan.salt or mark.offset != frame.offset or mark.durable > frame.offset:
        raise RecordFormatError(f"watermark {mark} does not belong at offset {frame.offset} of this segment")


def _torn_tail_or_corrupt(scan: SegmentScan, offset: int, problem: str, is_last: bool) -> None:
    """Damage after the checkpoint. A cut here loses nothing acknowledged exactly when no
    completed fsync covered `offset`: then nothing written after it was acknowledged either,
    whatever order the kernel wrote the pages back in. A trusted watermark after the damage
    that reaches past it proves the opposite, and an older segment was synced in full before
    its successor was created."""
    if not is_last:
        raise LogCorruptError(scan.path, offset, f"{problem} (not the last segment: it was synced in "
                              "full before the next one was created)")
    durable = durable_claim_after(scan.data, offset + 1, scan.salt)
    if durable > offset:
        raise LogCorruptError(scan.path, offset, f"{problem} in synced data (a later watermark records "
                              f"that the segment was synced up to offset {durable})")
    scan.torn_at, scan.torn_reason = offset, problem
    if _valid_frame_after(scan.data, offset + 1):
        scan.torn_reason += "; valid records after it were never synced: written back out of order"


def _torn_creation_or_corrupt(scan: SegmentScan, offset: int, problem: str, is_last: bool) -> SegmentScan:
    """Damage in the header or checkpoint: a segment's creation is synced before any record
    is appended to it, so this is a torn creation only if no valid frame follows."""
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

    def __init__(self, fd: int, seq: int, path: Path, tail: int, data_start: int, salt: int) -> None:
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
        self.salt = salt
        self.marked = data_start
        """`durable` of the last watermark written. The checkpoint needs none (creation is
        synced before anything follows it), and a repeat of the same value adds nothing."""

    @classmethod
    def create(cls, directory: Path, seq: int, checkpoint: bytes, prealloc_size: int) -> SegmentWriter:
        """A new durable segment: header and checkpoint synced, directory entry synced."""
        path = directory / segment_name(seq)
        salt = new_salt()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fsutil.preallocate(fd, prealloc_size)
            fsutil.pwrite_all(fd, encode_file_header(seq, salt) + checkpoint, 0)
            os.fsync(fd)
            fsutil.fsync_dir(directory)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)  # ours (O_EXCL) and never complete: no half segment stays
            raise
        end = FILE_HEADER.size + len(checkpoint)
        return cls(fd, seq, path, end, end, salt)

    @classmethod
    def reopen(cls, scan: SegmentScan, prealloc_size: int) -> SegmentWriter:
        """Continue the last segment after recovery, cutting a torn tail first.

        Always fsyncs: what load read may have been only in the page cache (the process died,
        the machine did not), and the writer's first watermark will say that all of it is
        durable. The cut of a torn tail must be durable before anything is written after it."""
        fd = os.open(scan.path, os.O_RDWR)
        try:
            if scan.torn_at is not None:
                os.ftruncate(fd, scan.end)
            fsutil.preallocate(fd, prealloc_size)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        data_start = scan.frames[0].offset + scan.frames[0].size
        return cls(fd, scan.seq, scan.path, scan.end, data_start, scan.salt)

    def has_records(self) -> bool:
        return self.tail > self.data_start

    def overhead(self) -> int:
        """Bytes the next append() adds in front of its records (its watermark, if any)."""
        return WATERMARK_SIZE if self.synced != self.marked else 0

    def append(self, records: Sequence[bytes]) -> int:
        """Write `records` at the tail in one pwrite, after a watermark when a sync has
        completed since the last one; returns the offset of the first record. Not durable
        until sync()."""
        mark = b""
        if self.synced != self.marked:
            mark = encode_watermark(self.salt, self.tail, self.synced)
        data = b"".join((mark, *records))
        fsutil.pwrite_all(self.fd, data, self.tail)
        offset = self.tail + len(mark)
        self.tail += len(data)
        if mark:
            self.marked = self.synced
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
