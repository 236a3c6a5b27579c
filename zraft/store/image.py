"""Snapshot images: ship a live database as its raw files, install a received one atomically.

A snapshot sent to a follower that is far behind used to be a backup-API copy written to a
local file first (``snapshot.py``): a second copy of the database on the leader's disk, and
the whole database read and written once more before the first byte leaves. An *image* is
read straight from the live files instead, while the writer keeps applying.

The stream
==========
``[header 44 B][main database file: db_length B][WAL prefix: wal_length B][trailer 16 B]``

- header: magic ``ZRAFTIMG``, format version (u16), reserved flags (u16, 0), page size (u32),
  the applied index the exporter's read transaction saw (u64), ``db_length`` (u64),
  ``wal_length`` (u64), CRC-32 of the 40 bytes before it (u32). Big-endian. Version first, so
  that a later format can change the rest; its own checksum, so that a damaged header is
  reported as such instead of as a strange length.
- trailer: flags (u32; bit 0 = "drop the WAL part", below), CRC-32 of the header, both file
  parts and the flags (u32), end magic ``ZRAFTEND``.

Why the two raw files make a consistent image
=============================================
``open_export`` opens a read-only connection, runs ``BEGIN`` and reads ``_zraft_meta`` (that
starts the read transaction and gives the applied index it sees), *then* opens the ``-wal``
file and takes both files' sizes. The files are read with ``os.pread`` on those descriptors
while the read transaction stays open, so a rename of the live path changes nothing. What
the writer and checkpointers can do meanwhile (SQLite's ``wal.c``: ``walTryBeginRead``,
``walCheckpoint``, ``walRestartLog``; https://sqlite.org/walformat.html, "WAL locks"):

- A reader gets read-mark 0 exactly when the WAL was fully backfilled as it began
  (``nBackfill == mxFrame``): the main file alone holds its snapshot. Otherwise it holds
  read-mark m > 0 (a ``WAL_READ_LOCK(i>0)`` in shared mode).
- Read-mark m > 0: a checkpoint backfills only frames <= m (``mxSafeFrame`` stops at every
  busy read-mark), and the WAL is never restarted (``walRestartLog`` and RESTART/TRUNCATE
  checkpoints need all of ``WAL_READ_LOCK(1..)`` exclusively). So the WAL bytes up to the
  reader's ``mxFrame`` never change, and they are inside the shipped prefix (frames are in the
  file before the wal-index publishes them; the length is taken after the read began). Every
  page of the main file that a checkpoint rewrites during the copy, even one copied half
  old, half new, comes from one of those frames; the receiver's WAL recovery replays them,
  so its copy of the page is overlaid. Pages no frame touches are not written at all.
- Read-mark 0: backfilling needs ``WAL_READ_LOCK(0)`` exclusively, so the main file does not
  change while the export holds it. But the writer may *restart* the WAL (new salts, new
  frames written from the start of the file) or a TRUNCATE checkpoint may cut it to zero.
  One would expect recovery then simply to stop at the first frame with the wrong salt.
  Not enough: if the copy took the old WAL header and the first old frames *before* the
  restart and a new frame after, recovery replays a *prefix* of the old frames over a main
  file that already holds their successors, and pages rewritten later in the old WAL come
  back older than the rest: a state that never existed
  (``test_wal_restart_during_export_is_detected`` builds it). The exporter therefore keeps
  the WAL header it saw at open and reads it again after every read of the WAL part and
  before producing the trailer. The header changes on every restart (salt-1 is incremented,
  the checkpoint counter too) and is written before any frame of the new generation, so "same
  header after the last WAL read" proves that every WAL byte shipped predates any restart.
  If it changed, a restart happened, which is only possible at read-mark 0, where the main
  file alone is the exporter's snapshot: the trailer's flag tells the receiver to drop the
  WAL part. (At most one restart can happen under such an export: a restart needs the WAL
  fully backfilled, and once frames are appended the export's lock keeps them from being
  backfilled. So a header first read after that restart is still valid.)
- Frames appended after the copied length are not shipped; a transaction cut off at that
  length, or frames caught mid-write, fail their checksum chain, and recovery keeps only up
  to the last valid commit frame.

So the receiver recovers *some* committed state at or after the one the export's read saw,
never a mix, and its applied index is read from ``_zraft_meta`` after recovery.

Resuming, and what the checksum covers
======================================
``Export.read(offset, n)`` may be called at any offset; the file bytes are read when asked
for. The CRC is computed as the stream is produced, and the exporter remembers it at the end
of every read it served (a later read ending at the same offset replaces it). A puller that
resumes at ``Receiver.received`` (the end of the last read the receiver kept) continues from
the CRC remembered there, and the bytes it is sent from then on are hashed as they are read
now, even if the live files changed meanwhile (a checkpoint rewrote a page: still a valid
image, by the argument above). The receiver computes the CRC over exactly what it kept and
compares. Resuming anywhere else re-reads from the nearest remembered offset below; if those
bytes changed since they were first sent, the CRCs differ and ``finish`` refuses the image
(safe; the transfer starts again). The receiver also refuses a write that repeats kept bytes
with different ones. The trailer is computed each time it is served.

The checksum is ``zlib.crc32``: the fastest integrity check in the standard library here
(1.7 GB/s on the CI kind of machine, zlib 1.2.13; adler32 1.1, sha256 0.9 with SHA-NI, sha1
0.7, blake2b 0.7, md5 0.45), computed on both sides, so its speed matters twice. It guards
against damage in transit and on disk, not against a malicious sender (nothing here does;
peers are trusted). ``quick_check`` after recovery catches what a CRC cannot: a sender whose
files were already damaged.

Installing
==========
See ``install``. Its argument, and the protocol for readers in other processes, are in
DESIGN.md ("Snapshot images (issue 11)").
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import zlib
from bisect import bisect_right, insort
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import apsw

from zraft.store import meta

MAGIC = b"ZRAFTIMG"
END_MAGIC = b"ZRAFTEND"
FORMAT_VERSION = 1
_HEADER_BODY = struct.Struct(">8sHHIQQQ")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER_BODY.size + _CRC.size
_TRAILER = struct.Struct(">II8s")
TRAILER_SIZE = _TRAILER.size
FLAG_DROP_WAL = 1
"""Trailer flag: the WAL was restarted while the export ran; the main file alone is the image."""
_KNOWN_FLAGS = FLAG_DROP_WAL

_WAL_HEADER_SIZE = 32
SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_MS = 5_000
_CRC_BLOCK = 1 << 20
"""Bytes read at a time when the received image's checksum is computed from disk."""
IMAGE_NAME = "image.sqlite"
GENERATION_SUFFIX = ".generation"

INSTALL_STEPS = ("locked", "bumped", "quiesced", "wal-removed", "side-files-removed", "dir-synced",
                 "renamed", "synced")
"""The points between the steps of ``install``, in order (its ``on_step`` hook is called at each)."""


class ImageError(Exception):
    """An image could not be exported, received or installed; the message says why."""


class InstallBusy(ImageError):
    """The live database is still in use (a reader in the WAL, a writer left open): nothing
    was changed; close what uses it and try again."""


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the stream's header says."""

    page_size: int
    applied_index: int
    """Applied index the exporter's read transaction saw (the image recovers to it or later)."""
    db_length: int
    wal_length: int
    version: int = FORMAT_VERSION

    @property
    def body_size(self) -> int:
        """Bytes covered by the trailer's checksum, flags excluded."""
        return HEADER_SIZE + self.db_length + self.wal_length

    @property
    def size(self) -> int:
        """Length of the whole stream."""
        return self.body_size + TRAILER_SIZE

    def encode(self) -> bytes:
        body = _HEADER_BODY.pack(MAGIC, self.version, 0, self.page_size, self.applied_index, self.db_length,
                                 self.wal_length)
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def decode(cls, data: bytes) -> ImageHeader:
        """Parse and check a header; ImageError says what is wrong with it."""
        magic = data[:len(MAGIC)]
        if magic != MAGIC:
            raise ImageError(f"not a zraft database image: bad magic {magic!r}")
        version = int.from_bytes(data[8:10], "big")
        if version > FORMAT_VERSION:
            raise ImageError(f"image format version {version} is newer than this zraft reads "
                             f"(up to {FORMAT_VERSION}): upgrade this node")
        if version < 1:
            raise ImageError(f"unknown image format version {version}")
        body = data[:_HEADER_BODY.size]
        if _CRC.unpack_from(data, _HEADER_BODY.size)[0] != zlib.crc32(body):
            raise ImageError("image header is damaged (its checksum does not match)")
        _, _, flags, page_size, applied, db_length, wal_length = _HEADER_BODY.unpack(body)
        if flags:
            raise ImageError(f"image header has unknown flags {flags:#x}")
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise ImageError(f"image page size {page_size} is not one SQLite uses")
        if db_length == 0 or db_length % page_size:
            raise ImageError(f"image database length {db_length} is not a whole number of {page_size}-byte pages")
        return cls(page_size, applied, db_length, wal_length, version)


# -- export ------------------------------------------------------------------------------


class Export:
    """A consistent image of a live database, readable as one byte stream at any offset.

    Made by ``open_export``; holds a read transaction on the database (which keeps the WAL
    from being restarted while its snapshot is in the WAL, so close it when done: a forgotten
    export makes the WAL grow) and descriptors of both files. Thread-safe.
    """

    def __init__(self, conn: apsw.Connection, db_fd: int, wal_fd: int | None, header: ImageHeader,
                 wal_head: bytes) -> None:
        self._conn = conn
        self._db_fd = db_fd
        self._wal_fd = wal_fd
        self.header = header
        self._head = header.encode()
        self._wal_head = wal_head
        self._wal_moved = False
        self._lock = threading.Lock()
        self._closed = False
        # offset -> CRC of the stream before it, as last served; one per read, for resumes
        self._marks: dict[int, int] = {0: 0}
        self._mark_offsets = [0]

    @property
    def size(self) -> int:
        """Length of the whole stream, known from the start."""
        return self.header.size

    @property
    def applied_index(self) -> int:
        """Applied index the read transaction saw; the image recovers to it or a later one."""
        return self.header.applied_index

    @property
    def wal_dropped(self) -> bool:
        """True once the exporter has seen the WAL restarted: the trailer then tells the
        receiver to use the main file alone (which, in that case, is this export's snapshot)."""
        return self._wal_moved

    def read(self, offset: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the stream from ``offset`` (fewer only at its end)."""
        with self._lock:
            if self._closed:
                raise ImageError("export is closed")
            if offset < 0 or offset > self.size or max_bytes < 0:
                raise ValueError(f"read({offset}, {max_bytes}) outside a stream of {self.size} bytes")
            end = min(self.size, offset + max_bytes)
            body_end = self.header.body_size
            parts: list[bytes] = []
            if offset < body_end:
                stop = min(end, body_end)
                crc = self._crc_at(offset)
                data = self._body(offset, stop)
                self._mark(stop, zlib.crc32(data, crc))
                parts.append(data)
            if end > body_end:
                trailer = self._trailer()
                parts.append(trailer[max(offset, body_end) - body_end:end - body_end])
            return b"".join(parts)

    def close(self) -> None:
        """End the read transaction and release the files. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._conn.get_autocommit():
                    self._conn.execute("ROLLBACK")
                self._conn.close()
            finally:
                os.close(self._db_fd)
                if self._wal_fd is not None:
                    os.close(self._wal_fd)

    def __enter__(self) -> Export:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _crc_at(self, offset: int) -> int:
        """The CRC of [0, offset): remembered if a read ended there, else computed from the
        nearest remembered offset below by reading the bytes in between again."""
        crc = self._marks.get(offset)
        if crc is not None:
            return crc
        start = self._mark_offsets[bisect_right(self._mark_offsets, offset) - 1]
        crc = self._marks[start]
        step = 1 << 20
        while start < offset:
            stop = min(offset, start + step)
            crc = zlib.crc32(self._body(start, stop), crc)
            start = stop
        return crc

    def _mark(self, offset: int, crc: int) -> None:
        """Remember the CRC at the end of a read. A later read ending at the same offset
        replaces it: a receiver that resumed keeps the bytes of the *latest* reads."""
        if offset not in self._marks:
            insort(self._mark_offsets, offset)
        self._marks[offset] = crc

    def _body(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of header + db + wal, read now."""
        db_start = HEADER_SIZE
        wal_start = db_start + self.header.db_length
        parts: list[bytes] = []
        if start < db_start:
            parts.append(self._head[start:min(stop, db_start)])
        if stop > db_start and start < wal_start:
            lo, hi = max(start, db_start) - db_start, min(stop, wal_start) - db_start
            parts.append(_pread_exact(self._db_fd, lo, hi - lo))
        if stop > wal_start and self._wal_fd is not None:
            lo, hi = max(start, wal_start) - wal_start, stop - wal_start
            parts.append(_pread_exact(self._wal_fd, lo, hi - lo))
            self._check_wal()
        return b"".join(parts)

    def _check_wal(self) -> None:
        """Note a WAL restart (or truncation) since open: the header we shipped is gone."""
        if self._wal_fd is not None and os.pread(self._wal_fd, _WAL_HEADER_SIZE, 0) != self._wal_head:
            self._wal_moved = True

    def _trailer(self) -> bytes:
        crc = self._crc_at(self.header.body_size)
        self._mark(self.header.body_size, crc)
        self._check_wal()
        flags = FLAG_DROP_WAL if self._wal_moved else 0
        return _TRAILER.pack(flags, zlib.crc32(flags.to_bytes(4, "big"), crc), END_MAGIC)


def open_export(db_path: str | os.PathLike[str]) -> Export:
    """Start exporting the live WAL database at ``db_path``: no copy is made, the stream is
    read from the live files (see the module docstring for why that is consistent).

    Raises ImageError for a file that is not a WAL database with zraft's meta table, or that
    was replaced while the export started (try again).
    """
    path = os.fspath(db_path)
    db_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    wal_fd: int | None = None
    conn: apsw.Connection | None = None
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
        mode = conn.execute("PRAGMA journal_mode").get
        if mode != "wal":
            # a read transaction in rollback mode would block every writer for the whole export
            raise ImageError(f"{path}: journal mode is {mode!r}, images need WAL")
        conn.execute("BEGIN")
        state = meta.read(conn)  # this starts the read transaction: the snapshot is fixed here
        if state is None:
            raise ImageError(f"{path}: no {meta.META_TABLE} table in zraft's format")
        page_size = int(conn.execute("PRAGMA page_size").get or 0)
        try:
            wal_fd = os.open(path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            wal_fd = None
        if not _same_file(os.fstat(db_fd), path):
            raise ImageError(f"{path} was replaced while the export started; try again")
        db_length = os.fstat(db_fd).st_size // page_size * page_size
        wal_length = os.fstat(wal_fd).st_size if wal_fd is not None else 0
        wal_head = os.pread(wal_fd, _WAL_HEADER_SIZE, 0) if wal_fd is not None else b""
        if len(wal_head) < _WAL_HEADER_SIZE:
            # no WAL, or one truncated by a checkpoint: then nothing is in it, and the read
            # transaction (read-mark 0) keeps every checkpoint out of the main file
            if wal_fd is not None:
                os.close(wal_fd)
            wal_fd, wal_length, wal_head = None, 0, b""
        for fd in (db_fd, wal_fd):
            if fd is not None and hasattr(os, "posix_fadvise"):  # read-ahead; not on macOS
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        header = ImageHeader(page_size, state.applied_index, db_length, wal_length)
        return Export(conn, db_fd, wal_fd, header, wal_head)
    except BaseException:
        if conn is not None:
            conn.close()
        os.close(db_fd)
        if wal_fd is not None:
            os.close(wal_fd)
        raise


# -- receive -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """A verified image, recovered and checkpointed into a single file, ready for ``install``."""

    path: str
    applied_index: int
    page_size: int
    bytes: int


class Receiver:
    """Writes one image stream into ``staging_dir`` (which it owns: created here, removed
    when the image is refused) and turns it into a database file with ``finish``.

    Writes must come in order; a write may start below ``received`` (a resumed transfer) if
    the bytes it repeats are the ones already kept. Refused writes (a gap, a repeat that
    differs, bytes past the end) raise ImageError and change nothing, so the sender can resume
    at ``received``. A damaged header, or any failure in ``finish``, removes the staging files.
    State is in memory: a new Receiver on the same directory starts over.
    """

    def __init__(self, staging_dir: str | os.PathLike[str]) -> None:
        self._dir = Path(staging_dir).absolute()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._db_path = str(self._dir / IMAGE_NAME)
        self._clear_files()
        self._head = bytearray()
        self._tail = bytearray()
        self._header: ImageHeader | None = None
        self._db_fd: int | None = None
        self._wal_fd: int | None = None
        self._received = 0
        self._done = False

    @property
    def received(self) -> int:
        """Bytes kept so far, in order: where a resumed transfer continues."""
        return self._received

    @property
    def header(self) -> ImageHeader | None:
        """The stream's header, once its bytes have arrived."""
        return self._header

    def write(self, offset: int, data: bytes) -> None:
        """Keep ``data`` as the stream's bytes at ``offset``."""
        if self._done:
            raise ImageError("receiver is finished or aborted")
        if offset < 0:
            raise ImageError(f"write at negative offset {offset}")
        if offset > self._received:
            raise ImageError(f"write at offset {offset} would leave a gap: only {self._received} bytes received; "
                             f"resume from {self._received}")
        end = offset + len(data)
        if self._header is not None and end > self._header.size:
            raise ImageError(f"write of [{offset}, {end}) goes past the end of the {self._header.size}-byte image")
        repeat = min(end, self._received) - offset
        if repeat > 0 and self._kept(offset, repeat) != data[:repeat]:
            raise ImageError(f"bytes at [{offset}, {offset + repeat}) differ from those already received "
                             f"(the source changed since); resume from {self._received}")
        view = memoryview(data)[max(repeat, 0):]
        while view:
            view = view[self._append(view):]

    def finish(self) -> Received:
        """Check the stream, recover it into one database file and return it.

        Any problem (a short stream, a checksum or magic that does not match, a database that
        fails ``quick_check`` or lacks zraft's meta table) raises ImageError after removing
        the staging files.
        """
        if self._done:
            raise ImageError("receiver is finished or aborted")
        try:
            return self._finish()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything received (the staging files, and the directory if that empties it).
        An aborted receiver shows ``received == 0`` and no header, and refuses further writes:
        the transfer starts again with a new Receiver."""
        self._done = True
        self._received, self._header = 0, None
        self._close_fds()
        self._clear_files()
        try:
            self._dir.rmdir()
        except OSError:
            pass

    # -- internals -----------------------------------------------------------------------

    def _append(self, data: memoryview) -> int:
        """Keep a prefix of ``data`` at ``received``; returns its length (one region at a time)."""
        pos = self._received
        header = self._header
        if header is None:
            n = min(len(data), HEADER_SIZE - pos)
            self._head += data[:n]
            self._received += n
            if len(self._head) == HEADER_SIZE:
                try:
                    self._header = ImageHeader.decode(bytes(self._head))
                except ImageError:
                    self.abort()
                    raise
                self._db_fd = os.open(self._db_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                self._wal_fd = os.open(self._db_path + "-wal", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                       0o644)
            return n
        wal_start = HEADER_SIZE + header.db_length
        if pos < wal_start:
            n = min(len(data), wal_start - pos)
            assert self._db_fd is not None
            _pwrite_all(self._db_fd, data[:n], pos - HEADER_SIZE)
        elif pos < header.body_size:
            n = min(len(data), header.body_size - pos)
            assert self._wal_fd is not None
            _pwrite_all(self._wal_fd, data[:n], pos - wal_start)
        else:
            n = len(data)
            self._tail += data
            self._received += n
            return n
        self._received += n
        return n

    def _stored_crc(self, header: ImageHeader) -> int:
        """CRC-32 of the stream's body as it is on disk now, not as it arrived: a bit that
        flips in the staging files between a write and the install is caught too."""
        assert self._db_fd is not None and self._wal_fd is not None
        crc = zlib.crc32(self._head)
        for fd, length in ((self._db_fd, header.db_length), (self._wal_fd, header.body_size - HEADER_SIZE
                                                               - header.db_length)):
            offset = 0
            while offset < length:
                block = _pread_exact(fd, offset, min(_CRC_BLOCK, length - offset))
                crc = zlib.crc32(block, crc)
                offset += len(block)
        return crc

    def _kept(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) as already kept."""
        header = self._header
        if header is None:
            return bytes(self._head[offset:offset + length])
        out: list[bytes] = []
        end = offset + length
        wal_start = HEADER_SIZE + header.db_length
        regions = ((0, HEADER_SIZE), (HEADER_SIZE, wal_start), (wal_start, header.body_size),
                   (header.body_size, header.size))
        for index, (lo, hi) in enumerate(regions):
            a, b = max(offset, lo), min(end, hi)
            if a >= b:
                continue
            if index == 0:
                out.append(bytes(self._head[a:b]))
            elif index == 3:
                out.append(bytes(self._tail[a - lo:b - lo]))
            else:
                fd = self._db_fd if index == 1 else self._wal_fd
                assert fd is not None
                out.append(_pread_exact(fd, a - lo, b - a))
        return b"".join(out)

    def _finish(self) -> Received:
        header = self._header
        expected = header.size if header is not None else None
        if header is None or self._received != expected:
            raise ImageError(f"image is truncated: received {self._received} of "
                             f"{expected if expected is not None else 'at least ' + str(HEADER_SIZE)} bytes")
        flags, crc, end_magic = _TRAILER.unpack(bytes(self._tail))
        if end_magic != END_MAGIC:
            raise ImageError(f"image trailer is damaged: bad end magic {end_magic!r}")
        if zlib.crc32(flags.to_bytes(4, "big"), self._stored_crc(header)) != crc:
            raise ImageError("image checksum does not match: the bytes were damaged on the way or on disk")
        if flags & ~_KNOWN_FLAGS:
            raise ImageError(f"image trailer has unknown flags {flags:#x}")
        assert self._db_fd is not None and self._wal_fd is not None
        first = _pread_exact(self._db_fd, 0, 100)
        stored_page = int.from_bytes(first[16:18], "big")
        if first[:16] != SQLITE_MAGIC or (stored_page if stored_page != 1 else 65536) != header.page_size:
            raise ImageError("image does not hold an SQLite database with the page size its header gives")
        self._close_fds()
        wal = self._db_path + "-wal"
        if flags & FLAG_DROP_WAL or header.wal_length < _WAL_HEADER_SIZE:
            os.unlink(wal)
        Path(self._db_path + "-shm").unlink(missing_ok=True)
        applied = self._recover(header)
        size = os.path.getsize(self._db_path)
        _fsync(self._db_path)
        _fsync(str(self._dir))
        self._done = True
        return Received(self._db_path, applied, header.page_size, size)

    def _recover(self, header: ImageHeader) -> int:
        """WAL recovery, quick_check, the applied index, then everything into the main file."""
        try:
            conn = apsw.Connection(self._db_path, flags=apsw.SQLITE_OPEN_READWRITE)
        except apsw.Error as exc:
            raise ImageError(f"received image does not open: {exc}") from exc
        try:
            conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise ImageError(f"received image fails quick_check: {'; '.join(problems)}")
            state = meta.read(conn)
            if state is None:
                raise ImageError(f"received image has no {meta.META_TABLE} table in zraft's format")
            if state.applied_index < header.applied_index:
                raise ImageError(f"received image recovered to applied index {state.applied_index}, before the "
                                 f"{header.applied_index} its export saw")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").get
            if busy:
                raise ImageError("could not checkpoint the received image (is something else using the staging "
                                 "directory?)")
            if conn.execute("PRAGMA journal_mode").get != "wal":
                raise ImageError("received image is not in WAL mode")
        except apsw.Error as exc:
            raise ImageError(f"received image is not a usable database: {exc}") from exc
        finally:
            conn.close()  # the last connection: SQLite removes the (empty) -wal and the -shm
        for suffix in ("-wal", "-shm"):
            side = Path(self._db_path + suffix)
            if side.exists() and suffix == "-wal" and side.stat().st_size:
                raise ImageError("received image still has WAL content after its checkpoint")
            side.unlink(missing_ok=True)
        return state.applied_index

    def _close_fds(self) -> None:
        for fd in (self._db_fd, self._wal_fd):
            if fd is not None:
                os.close(fd)
        self._db_fd = self._wal_fd = None

    def _clear_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(self._db_path + suffix).unlink(missing_ok=True)


# -- install -----------------------------------------------------------------------------


class Generation:
    """``<live db>.generation``: how processes that read the live file learn of an install.

    Holds an install counter (8 bytes, little-endian) and is the file ``install`` locks
    (``flock``) exclusively for the swap. A reader (another process, or a thread with its own
    Generation) opens its connection and runs a first read while holding ``shared()``, and
    remembers the value it got; before each later read it compares ``value()`` and reopens
    when it changed. ``flock`` rather than POSIX record locks: those belong to the process
    (any close of the file in the process drops them, and they never conflict within it).
    Each user needs its own Generation: two locks on one open file do not exclude each other.
    """

    def __init__(self, live_db_path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(live_db_path) + GENERATION_SUFFIX
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def value(self) -> int:
        """The install counter now (0 before the first install). One pread: cheap enough to
        ask before every read. A read racing a bump may see a torn value; any change means
        "reopen", so that is harmless."""
        data = os.pread(self._fd, 8, 0)
        return int.from_bytes(data, "little") if len(data) == 8 else 0

    @contextmanager
    def shared(self) -> Iterator[int]:
        """Hold off installs (they wait) while a reader opens and binds its connection."""
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            yield self.value()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self) -> Iterator[int]:
        """Held by ``install`` for the whole swap."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield self.value()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def bump(self) -> int:
        """Count an install (call with ``exclusive()`` held). Not fsynced: after a power
        loss every process starts afresh and has nothing cached to invalidate."""
        value = self.value() + 1
        os.pwrite(self._fd, value.to_bytes(8, "little"), 0)
        return value

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def quiesce(conn: apsw.Connection) -> None:
    """Move everything in ``conn``'s WAL into the main file and empty the WAL, durably.

    For the owner of the live database, as the last thing before it closes its connections
    for an install (``install`` does it again itself, finding nothing to do). Raises
    InstallBusy if a reader still uses the WAL after the connection's busy timeout.
    """
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").get
    if busy:
        raise InstallBusy(f"{conn.db_filename('main')}: a reader or writer still uses the WAL; "
                          "the checkpoint could not empty it")
    path = conn.db_filename("main")
    _fsync(path)
    if os.path.exists(path + "-wal"):
        _fsync(path + "-wal")  # makes its truncation durable
    _fsync(os.path.dirname(path) or ".")


def install(received: Received, live_db_path: str | os.PathLike[str], *, busy_timeout_ms: int = 10_000,
            on_step: Callable[[str], None] | None = None) -> int:
    """Replace the database at ``live_db_path`` with a received image; returns the new
    generation (``Generation.value()``).

    Precondition: the caller has closed every connection it owns to the live database (the
    store's writer and reader pool, any Export), and other processes follow the reader
    protocol of ``Generation`` with read-only connections. The staging directory must be on
    the live file's filesystem (a rename is the swap).

    Crash safety: killed at any point, the live path holds the old database with its own WAL
    (untouched, or emptied into the main file first), or the new one with no WAL at all;
    never the new file beside the old WAL. Order: lock, bump the generation, checkpoint the
    old WAL empty (refusing if readers keep it busy), remove the emptied WAL and the old
    ``-shm``/``-journal``, fsync the directory, rename the image over the live path, fsync the
    directory. The full argument is in DESIGN.md. ``on_step`` (tests) is called after each
    step with its name from INSTALL_STEPS.
    """
    live = os.path.abspath(os.fspath(live_db_path))
    live_dir = os.path.dirname(live)
    step = on_step or (lambda name: None)
    if not os.path.isfile(received.path):
        raise ImageError(f"{received.path}: no received image there (already installed?)")
    if os.stat(received.path).st_dev != os.stat(live_dir).st_dev:
        raise ImageError(f"{received.path} is not on the filesystem of {live}: stage images beside the live file")
    if os.path.exists(received.path + "-wal") and os.path.getsize(received.path + "-wal"):
        # finish() left a single file; content in a WAL beside it means someone wrote to it since
        raise ImageError(f"{received.path} was written to after it was received; receive it again")
    with Generation(live) as generation, generation.exclusive():
        step("locked")
        new_generation = generation.bump()
        step("bumped")
        if os.path.exists(live):
            _quiesce_path(live, busy_timeout_ms)
        step("quiesced")
        wal = live + "-wal"
        if os.path.exists(wal):
            if os.path.getsize(wal):
                raise InstallBusy(f"{wal} is not empty after the checkpoint: a writer is still open")
            os.unlink(wal)
        step("wal-removed")
        # A -shm left beside the new file would be trusted by its first opener if another
        # process still maps it (its header: the old database's size); a -journal would be
        # rolled back into it.
        for suffix in ("-shm", "-journal"):
            Path(live + suffix).unlink(missing_ok=True)
        step("side-files-removed")
        _fsync(live_dir)
        step("dir-synced")
        os.replace(received.path, live)
        step("renamed")
        _fsync(live_dir)
        staging = os.path.dirname(os.path.abspath(received.path))
        _fsync(staging)
        step("synced")
    for suffix in ("-wal", "-shm"):  # left by a read-only look at the staged image, if any
        Path(received.path + suffix).unlink(missing_ok=True)
    try:
        os.rmdir(staging)
    except OSError:
        pass
    return new_generation


def _quiesce_path(path: str, busy_timeout_ms: int) -> None:
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as exc:
        raise ImageError(f"{path}: cannot open the live database to checkpoint it: {exc}") from exc
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        if conn.execute("PRAGMA journal_mode").get == "wal":
            quiesce(conn)
    except apsw.BusyError as exc:
        raise InstallBusy(f"{path}: still in use, the checkpoint timed out: {exc}") from exc
    except apsw.Error as exc:  # a damaged live file: its WAL cannot be emptied, so it stays
        raise ImageError(f"{path}: cannot checkpoint the live database (remove it to install over it): "
                         f"{exc}") from exc
    finally:
        conn.close()


# -- helpers -----------------------------------------------------------------------------


def _pread_exact(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``, zeros past the end of the file (a file that shrank
    under us: by the module's argument those bytes never matter)."""
    parts: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            parts.append(bytes(length - got))
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _same_file(st: os.stat_result, path: str) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _fsync(path: str) -> None:
    """fsync a file or a directory (for a directory: makes renames and unlinks in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some filesystems refuse fsync on directories
            raise
    finally:
        os.close(fd)


__all__ = [
    "FORMAT_VERSION", "INSTALL_STEPS", "Export", "Generation", "ImageError", "ImageHeader", "InstallBusy",
    "Received", "Receiver", "install", "open_export", "quiesce",
]
