"""A FUSE filesystem that forgets what was never fsynced: a power cut on demand.

``python -m zraft.chaos.lazyfs BACKING MOUNTPOINT [--mode drop|torn|reorder] [--seed N]``
mounts BACKING at MOUNTPOINT in the foreground (single-threaded) until ``fusermount -u``.

Model
-----
BACKING is "the disk". File *data* changes (write, truncate, an ``O_TRUNC`` open) reach it
only when the file is fsynced or fdatasynced; until then they are held in memory per inode
and every read, and the size getattr reports, sees them. ``close`` makes nothing durable.
A **power cut** then decides what of the pending data reached the disk:

* ``drop`` (default): nothing did. Every file is exactly as at its last fsync.
* ``torn``: per file, a random prefix of its pending writes (in the order they were made)
  did, and of the first write left out, a random 512-byte-sector-aligned prefix: a torn tail.
* ``reorder``: per file, each 4 KiB page of each pending write (and each pending truncate)
  independently did or did not: out-of-order write-back, where a middle page can be lost
  while a later one survives.

``torn`` and ``reorder`` are seeded (``--seed``); cut number k of a run uses seed
``(seed, k)``, so a run is repeatable.

Namespace operations are **durable at once**: create, mkdir, mknod, symlink, link, rename,
unlink, rmdir, chmod, chown and utimens go straight to BACKING, and fsyncdir does nothing.
That is simpler, and stricter than nothing, but weaker than ext4, where a new or renamed
name can be lost unless its directory is fsynced: a missing directory fsync is *not*
caught by this filesystem.

Triggers: write ``cut`` to ``MOUNTPOINT/.lazyfs-control`` (the write returns once the cut is
done; ``sync`` flushes everything pending, like sync(1); ``slow=MS`` makes every later fsync
stall MS milliseconds, a slow disk, and ``slow=0`` ends it; reading the file returns a status
line), or send SIGUSR1 to the process. A cut models a power loss only when no process is
using the mount at that moment (kill them first): the kernel's page cache of a file that
stays open across a cut may still show the lost data. A file opened after the cut reads
what is on the disk, since nothing is opened with keep_cache and attributes are never
cached. Unmounting loses pending data too, as a cut does.

mmap works (SQLite's ``-shm``): reads return every byte up to the size getattr reports,
pending writes included, so a page fault never lands past what the kernel believes is the
end of the file. POSIX locks are left to the kernel (no ``lock`` operation is registered),
so they work between the processes of one machine. Unix-domain sockets can be bound on the
mount (mknod passes through), but nothing in a cut affects them.

Limits: fallocate is not supported (fusepy 3.0 does not expose it), so posix_fallocate
falls back to glibc's emulation, writing one byte per block: keep preallocated files small
(the Raft log's ``segment_bytes``). Extended attributes are not supported.
"""

from __future__ import annotations

import argparse
import bisect
import errno
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CONTROL_NAME = ".lazyfs-control"
Mode = Literal["drop", "torn", "reorder"]
MODES: tuple[Mode, ...] = ("drop", "torn", "reorder")
_SECTOR = 512
_PAGE = 4096
_Key = tuple[int, int]  # (st_dev, st_ino) of the backing file


def _delay_ms(word: str) -> int:
    try:
        delay = int(word.removeprefix("slow="))
    except ValueError:
        raise OSError(errno.EINVAL, f"bad delay in {word!r}") from None
    if not 0 <= delay <= 60_000:
        raise OSError(errno.EINVAL, f"delay out of range in {word!r}")
    return delay


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


# == one file's unsynced state ==================================================================
@dataclass
class _Write:
    offset: int
    data: bytes


@dataclass
class _Truncate:
    length: int


@dataclass
class Pending:
    """What was done to one inode since its last fsync, kept as an overlay on the disk copy.

    ``extents`` (sorted, non-overlapping starts and chunks) hold the bytes written; bytes
    outside them come from the disk below ``zero_from`` and read as zeros from there on (a
    pending truncate cut the file there). ``ops`` keeps every change in order, for the torn
    and reorder cuts only. ``fd`` is our own read-write descriptor of the inode: it keeps the
    inode (and so its number) alive while anything is pending, even after an unlink.
    """

    fd: int
    size: int
    record_ops: bool
    name: str = ""  # the backing path when the first change came, for messages
    zero_from: int | None = None
    starts: list[int] = field(default_factory=list)
    chunks: list[bytearray] = field(default_factory=list)
    ops: list[_Write | _Truncate] = field(default_factory=list)

    def pending_bytes(self) -> int:
        return sum(len(c) for c in self.chunks)

    def write(self, offset: int, data: bytes) -> None:
        if self.record_ops:
            self.ops.append(_Write(offset, data))
        if not data:
            return
        end = offset + len(data)
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0 or self.starts[i] + len(self.chunks[i]) < offset:
            i += 1  # extent i does not touch the write: start merging at the next one
        j = i
        while j < len(self.starts) and self.starts[j] <= end:
            j += 1
        if j == i:  # touches nothing: a new extent
            self.starts.insert(i, offset)
            self.chunks.insert(i, bytearray(data))
        elif j == i + 1 and self.starts[i] <= offset:  # the common case: within or after one extent
            rel = offset - self.starts[i]
            self.chunks[i][rel:rel + len(data)] = data
        else:
            lo = min(offset, self.starts[i])
            hi = max(end, self.starts[j - 1] + len(self.chunks[j - 1]))
            merged = bytearray(hi - lo)
            for s, c in zip(self.starts[i:j], self.chunks[i:j]):
                merged[s - lo:s - lo + len(c)] = c
            merged[offset - lo:end - lo] = data
            self.starts[i:j] = [lo]
            self.chunks[i:j] = [merged]
        self.size = max(self.size, end)

    def truncate(self, length: int) -> None:
        if self.record_ops:
            self.ops.append(_Truncate(length))
        if length < self.size:
            i = bisect.bisect_left(self.starts, length)
            del self.starts[i:], self.chunks[i:]
            if i and self.starts[i - 1] + len(self.chunks[i - 1]) > length:
                del self.chunks[i - 1][length - self.starts[i - 1]:]
            self.zero_from = length if self.zero_from is None else min(self.zero_from, length)
        self.size = length

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        buf = bytearray(end - offset)
        disk_end = min(end, self.size if self.zero_from is None else self.zero_from)
        if disk_end > offset:
            pos = offset
            while pos < disk_end:
                chunk = os.pread(self.fd, disk_end - pos, pos)
                if not chunk:
                    break
                buf[pos - offset:pos - offset + len(chunk)] = chunk
                pos += len(chunk)
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        while i < len(self.starts) and self.starts[i] < end:
            s, c = self.starts[i], self.chunks[i]
            lo, hi = max(s, offset), min(s + len(c), end)
            if lo < hi:
                buf[lo - offset:hi - offset] = c[lo - s:hi - s]
            i += 1
        return bytes(buf)

    def commit(self) -> None:
        """Write everything pending to the disk copy (an fsync)."""
        if self.zero_from is not None:
            os.ftruncate(self.fd, self.zero_from)
        for s, c in zip(self.starts, self.chunks):
            _pwrite_all(self.fd, c, s)
        if os.fstat(self.fd).st_size != self.size:
            os.ftruncate(self.fd, self.size)

    def partial_commit(self, mode: Mode, rng: random.Random) -> int:
        """Write what a power cut in ``mode`` lets reach the disk; return the bytes kept."""
        kept = 0
        if mode == "torn":
            n = rng.randint(0, len(self.ops))
            for op in self.ops[:n]:
                kept += self._apply(op)
            if n < len(self.ops):
                op = self.ops[n]
                if isinstance(op, _Write) and op.data:
                    cut = rng.randint(0, len(op.data))
                    cut = max(0, (op.offset + cut) // _SECTOR * _SECTOR - op.offset)
                    kept += self._apply(_Write(op.offset, op.data[:cut]))
        elif mode == "reorder":
            for op in self.ops:
                if isinstance(op, _Truncate):
                    if rng.random() < 0.5:
                        self._apply(op)
                    continue
                pos = op.offset
                while pos < op.offset + len(op.data):
                    page_end = min((pos // _PAGE + 1) * _PAGE, op.offset + len(op.data))
                    if rng.random() < 0.5:
                        kept += self._apply(_Write(pos, op.data[pos - op.offset:page_end - op.offset]))
                    pos = page_end
        return kept

    def _apply(self, op: _Write | _Truncate) -> int:
        if isinstance(op, _Truncate):
            os.ftruncate(self.fd, op.length)
            return 0
        if op.data:
            _pwrite_all(self.fd, op.data, op.offset)
        return len(op.data)

    def close(self) -> None:
        os.close(self.fd)


# == the filesystem =============================================================================
@dataclass
class _Handle:
    fd: int  # read-only descriptor of the backing file
    key: _Key


class LazyFS:
    """fusepy operations (``raw_fi=True``). Every operation runs under one lock, so the
    SIGUSR1 thread's cut never interleaves with one."""

    use_ns = True  # utimens gets nanoseconds

    def __init__(self, backing: str, mode: Mode = "drop", seed: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        self.root = os.path.realpath(backing)
        self.mode: Mode = mode
        self.seed = seed
        self.cuts = 0
        self.fsync_delay_s = 0.0
        self.slowed_syncs = 0
        self._mutex = threading.RLock()
        self._pending: dict[_Key, Pending] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        self._log = log or (lambda line: print(f"lazyfs: {line}", file=sys.stderr, flush=True))

    def __call__(self, op: str, *args: Any) -> Any:
        method = getattr(self, op, None)
        if method is None:
            raise OSError(errno.ENOSYS, op)
        with self._mutex:
            return method(*args)

    # -- power -------------------------------------------------------------------------
    def cut(self) -> str:
        """Power cut: pending data is lost (or partly kept, in torn/reorder mode)."""
        with self._mutex:
            self.cuts += 1
            rng = random.Random(f"{self.seed}:{self.cuts}")
            lost, kept, names = 0, 0, []
            for key in sorted(self._pending):
                pending = self._pending[key]
                lost += pending.pending_bytes()
                names.append(f"{pending.name} ({pending.pending_bytes()} B)")
                try:
                    if self.mode != "drop":
                        kept += pending.partial_commit(self.mode, rng)
                finally:
                    pending.close()
            self._pending.clear()
            line = (f"power cut #{self.cuts} ({self.mode}): {len(names)} files had {lost} unsynced bytes,"
                    f" {kept} of them written anyway: {', '.join(names) or '-'}")
            self._log(line)
            return line

    def sync(self) -> None:
        with self._mutex:
            for key in list(self._pending):
                self._commit(key)

    def status(self) -> str:
        with self._mutex:
            pending = sum(p.pending_bytes() for p in self._pending.values())
            return (f"mode={self.mode} cuts={self.cuts} pending_files={len(self._pending)} "
                    f"pending_bytes={pending} slow_ms={self.fsync_delay_s * 1000:.0f} "
                    f"slowed_syncs={self.slowed_syncs}\n")

    def _commit(self, key: _Key) -> None:
        """fsync: write the pending changes to the disk copy. If that fails (a full disk),
        the changes stay pending and readable, as a kernel keeps dirty pages in its cache
        after a failed writeback; dropping them would hand the program back stale bytes
        it never wrote, a corruption no real filesystem produces."""
        pending = self._pending.get(key)
        if pending is None:
            return
        pending.commit()  # an OSError (ENOSPC) reaches the caller of fsync
        del self._pending[key]
        pending.close()

    # -- helpers -----------------------------------------------------------------------
    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    @staticmethod
    def _is_control(path: str | None) -> bool:
        return path == "/" + CONTROL_NAME

    def _pending_for(self, key: _Key, reopen: str) -> Pending:
        """The inode's pending state, created (with our own read-write fd) on first change."""
        pending = self._pending.get(key)
        if pending is None:
            fd = os.open(reopen, os.O_RDWR)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != key:  # raced with a rename: refuse rather than mix files
                os.close(fd)
                raise OSError(errno.ESTALE, reopen)
            pending = Pending(fd=fd, size=st.st_size, record_ops=self.mode != "drop",
                              name=os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), self.root))
            self._pending[key] = pending
        return pending

    def _new_handle(self, fd: int, fi: Any) -> None:
        st = os.fstat(fd)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(fd, (st.st_dev, st.st_ino))
        fi.fh = fh

    def _handle(self, fi: Any) -> _Handle:
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return handle

    @staticmethod
    def _attrs(st: os.stat_result) -> dict[str, int]:
        return {
            "st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink, "st_uid": st.st_uid,
            "st_gid": st.st_gid, "st_size": st.st_size, "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize, "st_rdev": st.st_rdev, "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
        }

    # -- attributes and namespace (durable at once) ------------------------------------
    def getattr(self, path: str | None, fi: Any = None) -> dict[str, int]:
        if self._is_control(path):
            now = time.time_ns()
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0, "st_uid": os.getuid(),
                    "st_gid": os.getgid(), "st_atime": now, "st_mtime": now, "st_ctime": now}
        if fi and fi.fh in self._handles:
            st = os.fstat(self._handles[fi.fh].fd)
        elif path is not None:
            st = os.lstat(self._full(path))
        else:
            raise OSError(errno.EBADF, "no path and no handle")
        attrs = self._attrs(st)
        pending = self._pending.get((st.st_dev, st.st_ino))
        if pending is not None:
            attrs["st_size"] = pending.size
            attrs["st_blocks"] = (pending.size + 511) // 512
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    def access(self, path: str, amode: int) -> None:
        if not self._is_control(path) and not os.access(self._full(path), amode):
            raise OSError(errno.EACCES, path)

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._full(path))
        return {key: getattr(sv, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
            "f_frsize", "f_namemax")}

    def mknod(self, path: str, mode: int, dev: int) -> None:
        os.mknod(self._full(path), mode, dev)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._full(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._full(path))

    def unlink(self, path: str) -> None:
        if self._is_control(path):
            raise OSError(errno.EPERM, path)
        os.unlink(self._full(path))

    def symlink(self, target: str, source: str) -> None:  # fusepy: `target` is the new link
        os.symlink(source, self._full(target))

    def link(self, target: str, source: str) -> None:
        os.link(self._full(source), self._full(target))

    def rename(self, old: str, new: str) -> None:
        if self._is_control(old) or self._is_control(new):
            raise OSError(errno.EPERM, new)
        os.rename(self._full(old), self._full(new))  # pending data follows the inode

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._full(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._full(path), uid, gid, follow_symlinks=False)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        if self._is_control(path):
            return
        if times is None:
            os.utime(self._full(path), follow_symlinks=False)
        else:
            os.utime(self._full(path), ns=times, follow_symlinks=False)

    # -- file data (pending until fsync) -------------------------------------------------
    def create(self, path: str, mode: int, fi: Any) -> None:
        if self._is_control(path):
            raise OSError(errno.EEXIST, path)
        fd = os.open(self._full(path), os.O_CREAT | os.O_RDONLY | (fi.flags & os.O_EXCL), mode)
        self._new_handle(fd, fi)
        if fi.flags & os.O_TRUNC:
            self.truncate(path, 0, fi)

    def open(self, path: str, fi: Any) -> None:
        if self._is_control(path):
            fi.fh = 0
            fi.direct_io = 1  # reads and writes reach us whatever the size says
            return
        fd = os.open(self._full(path), os.O_RDONLY)
        self._new_handle(fd, fi)
        if fi.flags & os.O_TRUNC:
            self.truncate(path, 0, fi)

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        if fi.fh == 0:
            return self.status().encode()[offset:offset + size]
        handle = self._handle(fi)
        pending = self._pending.get(handle.key)
        if pending is not None:
            return pending.read(offset, size)
        return os.pread(handle.fd, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        if fi.fh == 0:
            self._control(data.decode(errors="replace"))
            return len(data)
        handle = self._handle(fi)
        self._pending_for(handle.key, f"/proc/self/fd/{handle.fd}").write(offset, data)
        return len(data)

    def truncate(self, path: str | None, length: int, fi: Any = None) -> None:
        if self._is_control(path) or (fi and fi.fh == 0):
            return
        if fi and fi.fh in self._handles:
            handle = self._handles[fi.fh]
            key, reopen = handle.key, f"/proc/self/fd/{handle.fd}"
        elif path is not None:
            st = os.stat(self._full(path))
            key, reopen = (st.st_dev, st.st_ino), self._full(path)
        else:
            raise OSError(errno.EBADF, "no path and no handle")
        self._pending_for(key, reopen).truncate(length)

    def fsync(self, path: str | None, datasync: int, fi: Any) -> None:
        if fi.fh == 0:
            return
        if self.fsync_delay_s:
            # A slow disk: every sync stalls, and (single-threaded) so does all I/O meanwhile.
            time.sleep(self.fsync_delay_s)
            self.slowed_syncs += 1
        self._commit(self._handle(fi).key)

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> None:
        return None  # namespace changes are already durable

    def flush(self, path: str | None, fi: Any) -> None:
        return None  # close() makes nothing durable

    def release(self, path: str | None, fi: Any) -> None:
        handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            os.close(handle.fd)

    # -- control file --------------------------------------------------------------------
    def _control(self, text: str) -> None:
        for word in text.split():
            if word == "cut":
                self.cut()
            elif word == "sync":
                self.sync()
            elif word.startswith("slow="):
                self.fsync_delay_s = _delay_ms(word) / 1000.0
            else:
                raise OSError(errno.EINVAL, f"unknown command {word!r} (use cut, sync or slow=MS)")

    def destroy(self, path: str) -> None:
        with self._mutex:
            if self._pending:
                self._log(f"unmounted with {len(self._pending)} files' unsynced data: lost")
            for pending in self._pending.values():
                pending.close()
            self._pending.clear()


# == running it =================================================================================
def serve(backing: str, mountpoint: str, mode: Mode = "drop", seed: int = 0, debug: bool = False) -> None:
    """Mount and serve in the foreground until unmounted. SIGUSR1 cuts the power."""
    from fuse import FUSE  # fusepy; imported here so that importing this module never needs it

    os.umask(0)  # the kernel has already applied the caller's umask to every mode we get
    fs = LazyFS(backing, mode, seed)
    # A Python signal handler would only run at the next filesystem operation (the main thread
    # sits in libfuse's loop), so a thread does the cut as soon as the signal arrives.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def on_signal() -> None:
        while True:
            data = os.read(wake_r, 64)
            if not data:
                return
            if signal.SIGUSR1 in data:
                fs.cut()

    threading.Thread(target=on_signal, name="lazyfs-sigusr1", daemon=True).start()
    FUSE(fs, mountpoint, raw_fi=True, foreground=True, nothreads=True, debug=debug, fsname="lazyfs",
         subtype="lazyfs", use_ino=True, attr_timeout=0, entry_timeout=0, negative_timeout=0,
         big_writes=True, max_write=131072)


def unavailable_reason() -> str | None:
    """Why a lazyfs mount cannot work here, or None when it can."""
    if os.geteuid() != 0:
        return "lazyfs needs root (it mounts a FUSE filesystem)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount") is None:
        return "fusermount is not installed (Debian package fuse3 or fuse)"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"fusepy or libfuse2 is not usable: {exc}"
    return None


class Mount:
    """A lazyfs process serving one mount point, for tests and the chaos runner."""

    def __init__(self, backing: Path, mountpoint: Path, mode: Mode = "drop", seed: int = 0,
                 log: Path | None = None, timeout_s: float = 10.0) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        backing.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab") if log else None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zraft.chaos.lazyfs", str(backing), str(mountpoint),
                 "--mode", mode, "--seed", str(seed)],
                stdout=out or subprocess.DEVNULL, stderr=out or subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout_s
        while not self.mounted():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"lazyfs did not mount {mountpoint} (exit code {self.proc.poll()})")
            time.sleep(0.02)

    @property
    def control(self) -> Path:
        return self.mountpoint / CONTROL_NAME

    def mounted(self) -> bool:
        target = os.path.realpath(self.mountpoint)
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == target and "lazyfs" in line.split()[2] for line in mounts)

    def cut(self) -> None:
        """Power cut, done when this returns."""
        self.control.write_text("cut\n")

    def sync(self) -> None:
        self.control.write_text("sync\n")

    def status(self) -> str:
        return self.control.read_text()

    def slow(self, delay_ms: int) -> None:
        """Make every fsync take `delay_ms` longer (0: full speed again)."""
        self.control.write_text(f"slow={delay_ms}\n")

    def slowed_syncs(self) -> int:
        """How many fsyncs have been slowed so far."""
        return int(self.status().split("slowed_syncs=")[1].split()[0])

    def unmount(self) -> None:
        """Unmount (lazily if busy) and stop the process; never raises."""
        if self.mounted():
            if subprocess.run(["fusermount", "-u", str(self.mountpoint)], capture_output=True).returncode:
                subprocess.run(["fusermount", "-uz", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zraft.chaos.lazyfs", description=__doc__.split("\n\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--mode", choices=MODES, default="drop", help="what a power cut keeps (default drop)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the torn and reorder modes")
    parser.add_argument("--torn-seed", type=int, default=None, help="shorthand for --mode torn --seed N")
    parser.add_argument("--debug", action="store_true", help="libfuse's debug output")
    args = parser.parse_args(argv)
    mode: Mode = args.mode
    seed: int = args.seed
    if args.torn_seed is not None:
        mode, seed = "torn", args.torn_seed
    serve(args.backing, args.mountpoint, mode, seed, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
