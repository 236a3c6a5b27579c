"""The data folders of a chaos cluster, on filesystems that can fail on purpose.

Each node's data folder (its Raft log, SQLite database and ipc sockets) is `nodeN/data`;
configs and logs stay beside it, outside, so that a fault never loses a node's identity:
- with power loss among the faults, `data` is a lazyfs mount (zraft.chaos.lazyfs) that
  drops everything not fsynced when it is cut;
- with disk full among the faults, the bytes live on a small tmpfs of their own (under the
  lazyfs mount if both are asked for), which a balloon file fills up.
Bit flips damage one synced entry record of a node's Raft log (flip_synced_entry_bit).
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from zraft.chaos.lazyfs import Mount, unavailable_reason
from zraft.logstore import LogStoreError
from zraft.logstore.records import FRAME_HEADER, RecordType
from zraft.logstore.segment import durable_claim_after, list_segments, scan_segment

DATA_SUBDIR = "data"
TMPFS_SIZE = "192m"
BALLOON = "balloon"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BitFlip:
    """One flipped bit: where, so that it can be reported and undone."""

    path: Path
    offset: int
    mask: int
    inode: int

    def describe(self) -> str:
        return f"{self.path.parent.name}/{self.path.name} byte {self.offset} mask {self.mask:#04x}"


def _toggle(path: Path, offset: int, mask: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ mask]), offset)
        os.fsync(fd)  # through lazyfs too: the damage is on "the disk"
    finally:
        os.close(fd)


def flip_synced_entry_bit(log_dir: Path, rng: random.Random) -> BitFlip | None:
    """Flip one bit inside an entry record that is provably fsynced: in a sealed segment, or
    below the last segment's durable watermark. A torn unsynced tail is legitimately cut on
    load, so damage there would prove nothing; damage here must be caught by the checksums."""
    segments = list_segments(log_dir)
    candidates: list[tuple[Path, int, int]] = []
    for position, (seq, path) in enumerate(segments):
        last = position == len(segments) - 1
        try:
            scan = scan_segment(seq, path, last)
        except LogStoreError:
            continue
        limit = durable_claim_after(scan.data, 0, scan.salt) if last else len(scan.data)
        candidates += [(path, frame.offset, frame.size) for frame in scan.frames
                       if frame.rtype == RecordType.ENTRY and frame.offset + frame.size <= limit]
    if not candidates:
        return None
    path, offset, size = rng.choice(candidates)
    header = FRAME_HEADER.size
    flip = BitFlip(path, offset + header + rng.randrange(size - header), 1 << rng.randrange(8),
                   path.stat().st_ino)
    _toggle(flip.path, flip.offset, flip.mask)
    return flip


def undo_flip(flip: BitFlip) -> bool:
    """The operator's repair: flip the bit back, if the damaged file is still in place. A
    node that salvaged its log has moved the damaged folder aside and written a new file
    under the same name, which must not be touched."""
    try:
        if flip.path.stat().st_ino != flip.inode:
            return False
    except FileNotFoundError:
        return False
    _toggle(flip.path, flip.offset, flip.mask)
    return True


class DiskError(RuntimeError):
    """A chaos filesystem could not be set up (not root, no FUSE, mount failed)."""


def mount_points() -> list[str]:
    """Every mount point of this machine, from /proc/self/mounts."""
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.strip()]


def _mounted(path: Path) -> bool:
    return os.path.realpath(path) in mount_points()


class NodeDisks:
    """One node's data folder and whatever it is mounted on."""

    def __init__(self, node_dir: Path, power_loss: bool, disk_full: bool, seed: int) -> None:
        """`power_loss`: the data folder is a lazyfs mount (also what slow disks need)."""
        self.node_dir = node_dir
        self.data = node_dir / DATA_SUBDIR
        self.tmpfs: Path | None = node_dir / "disk" if disk_full else None
        self.lazy: Mount | None = None
        self._power_loss, self._seed = power_loss, seed

    def setup(self) -> None:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        if self.tmpfs is not None:
            self.tmpfs.mkdir(exist_ok=True)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(self.tmpfs)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise DiskError(f"cannot mount a tmpfs on {self.tmpfs}: {done.stderr.strip()}")
        backing = (self.tmpfs / "data") if self.tmpfs is not None else self.node_dir / "backing"
        if self._power_loss:
            reason = unavailable_reason()
            if reason:
                raise DiskError(f"power loss needs lazyfs: {reason}")
            self.lazy = Mount(backing, self.data, mode="drop", seed=self._seed,
                              log=self.node_dir / "lazyfs.log")
        elif self.tmpfs is not None:
            backing.mkdir(exist_ok=True)
            self.data.symlink_to(backing, target_is_directory=True)
        else:
            self.data.mkdir(exist_ok=True)

    def cut(self) -> None:
        """Lose everything on this node's data folder that was not fsynced."""
        if self.lazy is None:
            raise DiskError("power loss was not set up for this run")
        self.lazy.cut()

    def slow(self, delay_ms: int) -> None:
        """Make every fsync on this node's data folder stall `delay_ms` (0: normal)."""
        if self.lazy is None:
            raise DiskError("slow disks need the lazyfs mount, which this run did not set up")
        self.lazy.slow(delay_ms)

    def slowed_syncs(self) -> int:
        return self.lazy.slowed_syncs() if self.lazy is not None else 0

    def fill(self) -> int:
        """Fill the node's tmpfs with a balloon until the disk is full; the bytes written."""
        if self.tmpfs is None:
            raise DiskError("disk full was not set up for this run")
        written = 0
        chunk = bytes(_CHUNK)
        with open(self.tmpfs / BALLOON, "ab", buffering=0) as balloon:
            while True:
                try:
                    written += balloon.write(chunk) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = bytes(len(chunk) // 2)
        return written

    def free_bytes(self) -> int:
        if self.tmpfs is None:
            return -1
        stats = os.statvfs(self.tmpfs)
        return stats.f_bavail * stats.f_frsize

    def drain(self) -> None:
        """Give the space back."""
        if self.tmpfs is not None:
            (self.tmpfs / BALLOON).unlink(missing_ok=True)

    def close(self) -> None:
        """Unmount everything; never raises (used in cleanup)."""
        if self.lazy is not None:
            self.lazy.unmount()
        if self.tmpfs is not None and _mounted(self.tmpfs):
            if subprocess.run(["umount", str(self.tmpfs)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.tmpfs)], capture_output=True)
