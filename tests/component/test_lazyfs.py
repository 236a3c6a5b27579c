"""lazyfs (zraft/chaos/lazyfs.py): a FUSE mount that loses every unsynced write at a power cut.

First the filesystem itself (pending writes are visible before the cut and gone after it,
namespace operations are durable at once, mmap and unix sockets work), then the two durable
parts of a node on it: the Raft log (FileLogStore) and the SQLite store (Database). A
"crash" is a forked child that writes and then dies with os._exit, closing nothing cleanly.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from zraft.chaos.lazyfs import Mode, Mount, Pending, unavailable_reason
from zraft.logstore import FileLogStore
from zraft.raft.types import Entry, EntryKind, HardState
from zraft.store import Command, Database, Statement, encode_command

REASON = unavailable_reason()
needs_fuse = pytest.mark.skipif(REASON is not None, reason=f"lazyfs cannot run here: {REASON}")


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    mounts: list[Mount] = []

    def make(mode: Mode = "drop", seed: int = 0) -> Mount:
        n = len(mounts)
        m = Mount(tmp_path / f"disk{n}", tmp_path / f"mnt{n}", mode=mode, seed=seed, log=tmp_path / f"lazyfs{n}.log")
        mounts.append(m)
        return m

    try:
        yield make
    finally:
        for m in mounts:
            m.unmount()


@pytest.fixture
def mnt(mount_factory: Callable[..., Mount]) -> Mount:
    return mount_factory()


def in_child(fn: Callable[[], object]) -> None:
    """Run fn in a forked child that then dies without closing or syncing anything: what fn
    returns is kept alive until then (an apsw connection checkpoints when it is freed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            keep = fn()  # noqa: F841
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"


# == the overlay model, without FUSE ============================================================
def test_pending_overlay_matches_a_plain_file(tmp_path: Path) -> None:
    """Random writes and truncates through Pending read back exactly like the same calls on
    a real file, and commit() leaves the disk copy equal to it."""
    rng = random.Random(5)
    disk, ref = tmp_path / "disk", tmp_path / "ref"
    base = bytes(rng.randrange(256) for _ in range(3000))
    disk.write_bytes(base)
    ref.write_bytes(base)
    pending = Pending(fd=os.open(disk, os.O_RDWR), size=len(base), record_ops=False)
    with open(ref, "r+b") as f:
        for _ in range(400):
            if rng.random() < 0.1:
                length = rng.randrange(0, 6000)
                pending.truncate(length)
                f.truncate(length)
            else:
                off, data = rng.randrange(0, 6000), bytes([rng.randrange(256)]) * rng.randrange(0, 700)
                pending.write(off, data)
                f.seek(off)
                f.write(data)
            f.flush()
            off, size = rng.randrange(0, 7000), rng.randrange(0, 3000)
            assert pending.read(off, size) == os.pread(f.fileno(), size, off)
            assert pending.size == os.fstat(f.fileno()).st_size
    assert disk.read_bytes() == base  # nothing reached the disk yet
    pending.commit()
    pending.close()
    assert disk.read_bytes() == ref.read_bytes()


# == the filesystem =============================================================================
@needs_fuse
def test_fsynced_data_survives_and_unsynced_is_lost(mnt: Mount) -> None:
    synced, unsynced = mnt.mountpoint / "synced", mnt.mountpoint / "unsynced"
    with open(synced, "wb") as f:
        f.write(b"durable")
        f.flush()
        os.fsync(f.fileno())
        f.write(b" tail")  # after the fsync: not durable
    with open(unsynced, "wb") as f:
        f.write(b"x" * 10_000)
    # before the cut, every reader sees the pending writes, sizes included
    assert synced.read_bytes() == b"durable tail"
    assert unsynced.stat().st_size == 10_000 and unsynced.read_bytes() == b"x" * 10_000
    assert (mnt.backing / "synced").read_bytes() == b"durable"  # the "disk"
    assert "pending_files=2" in mnt.status()
    mnt.cut()
    assert synced.read_bytes() == b"durable"
    assert unsynced.exists() and unsynced.read_bytes() == b""  # creation is durable, data is not
    assert "pending_files=0" in mnt.status() and "cuts=1" in mnt.status()


@needs_fuse
def test_fdatasync_truncate_rename_and_namespace(mnt: Mount) -> None:
    m = mnt.mountpoint
    (m / "d").mkdir()
    fd = os.open(m / "d" / "f", os.O_CREAT | os.O_RDWR, 0o640)
    os.write(fd, b"0123456789")
    os.fdatasync(fd)
    os.ftruncate(fd, 4)  # a pending truncate...
    os.pwrite(fd, b"AB", 6)  # ...then a write past it: bytes 4-5 read as zeros
    assert os.pread(fd, 100, 0) == b"0123\0\0AB"
    os.close(fd)
    os.rename(m / "d" / "f", m / "d" / "g")  # pending data follows the inode
    assert (m / "d" / "g").read_bytes() == b"0123\0\0AB"
    assert oct((m / "d" / "g").stat().st_mode & 0o777) == oct(0o640)
    (m / "gone").write_bytes(b"x")
    (m / "gone").unlink()
    (m / "empty").mkdir()
    (m / "empty").rmdir()
    os.utime(m / "d" / "g", ns=(10**18, 10**18))
    mnt.cut()
    assert sorted(os.listdir(m)) == ["d"]
    assert os.listdir(m / "d") == ["g"]  # the rename was durable at once, the data was not
    assert (m / "d" / "g").read_bytes() == b"0123456789"
    assert (m / "d" / "g").stat().st_mtime_ns == 10**18


@needs_fuse
def test_sync_command_and_sigusr1(mnt: Mount) -> None:
    f = mnt.mountpoint / "f"
    f.write_bytes(b"one")
    mnt.sync()  # like sync(1): everything pending is written
    f.write_bytes(b"two!")
    os.kill(mnt.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while "cuts=1" not in mnt.status():
        assert time.monotonic() < deadline, mnt.status()
        time.sleep(0.01)
    assert f.read_bytes() == b"one"


@needs_fuse
def test_mmap_and_unix_sockets_work(mnt: Mount) -> None:
    path = mnt.mountpoint / "shm"
    with open(path, "w+b") as f:
        f.truncate(2 * mmap.PAGESIZE)
        with mmap.mmap(f.fileno(), 2 * mmap.PAGESIZE) as mm:
            mm[mmap.PAGESIZE:mmap.PAGESIZE + 5] = b"hello"
            mm.flush()
    assert path.read_bytes()[mmap.PAGESIZE:mmap.PAGESIZE + 5] == b"hello"
    sock_path = str(mnt.mountpoint / "s.sock")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(sock_path)
        server.listen()
        client.connect(sock_path)
        conn, _ = server.accept()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()


@needs_fuse
@pytest.mark.parametrize("mode", ["torn", "reorder"])
def test_torn_modes_keep_part_of_the_unsynced_tail(mount_factory: Callable[..., Mount], mode: str) -> None:
    mnt = mount_factory(mode, seed=3)
    f = mnt.mountpoint / "f"
    payload = bytes(range(256)) * 64  # 16 KiB written in 16 writes of 1 KiB
    kept_sizes = set()
    for _ in range(8):
        with open(f, "wb") as out:
            out.write(b"H" * 100)
            out.flush()
            os.fsync(out.fileno())
            for i in range(16):
                out.write(payload[i * 1024:(i + 1) * 1024])
                out.flush()
        mnt.cut()
        data = f.read_bytes()
        assert data[:100] == b"H" * 100  # the synced part always survives
        body = data[100:]
        if mode == "torn":  # a prefix of the writes, cut on a sector boundary of the file
            assert body == payload[:len(body)]
            assert len(body) % 1024 == 0 or len(data) % 512 == 0  # whole writes, or a sector cut
        else:  # pages land independently: what is there is right, what is missing reads as zeros
            for i, byte in enumerate(body):
                assert byte in (payload[i], 0)
        kept_sizes.add(len(body))
    assert len(kept_sizes) > 2, f"{mode} always kept the same amount: {kept_sizes}"


# == the Raft log on lazyfs =====================================================================
def ents(lo: int, hi: int, term: int, size: int = 300) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi)]


def _write_log(log_dir: Path, start: int, synced_hi: int, unsynced_hi: int, batch: int = 1) -> FileLogStore:
    store = FileLogStore(log_dir, segment_size=64 << 10)
    store.load()
    for lo in range(start, synced_hi, 10):
        store.save(HardState(1, 1, lo), ents(lo, min(lo + 10, synced_hi), 1), sync=True)
    for lo in range(synced_hi, unsynced_hi, batch):  # never synced: the process dies with them
        store.save(None, ents(lo, min(lo + batch, unsynced_hi), 1, size=700), sync=False)
    return store


@needs_fuse
def test_logstore_keeps_synced_records_and_drops_the_unsynced_tail(mnt: Mount) -> None:
    log_dir = mnt.mountpoint / "raft"
    start = 1
    for round_ in range(2):  # the second round writes on top of a log recovered after a cut
        synced_hi = 200 * (round_ + 1)
        # the unsynced tail is one batch: a rollover would seal (fsync) the segment before it
        in_child(lambda: _write_log(log_dir, start, synced_hi, synced_hi + 30, batch=30))
        mnt.cut()
        with FileLogStore(log_dir, segment_size=64 << 10) as store:
            state = store.load()
            assert store.last_index() == synced_hi - 1  # every synced entry, no unsynced one
            assert [e.index for e in state.entries] == list(range(1, synced_hi))
            assert state.entries == tuple(ents(1, synced_hi, 1))
            assert len(list(log_dir.glob("*.seg"))) > 1  # it rolled over: several segments
            store.save(None, ents(synced_hi, synced_hi + 1, 1), sync=True)
        with FileLogStore(log_dir, segment_size=64 << 10) as store:
            assert store.load().entries[-1].index == synced_hi  # reopens and appends cleanly
        start = synced_hi + 1


@needs_fuse
@pytest.mark.parametrize("mode", ["torn", "reorder"])
def test_logstore_under_torn_and_reordered_tails(mount_factory: Callable[..., Mount], mode: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Whatever part of the unsynced tail a cut keeps, load returns a prefix of what was
    written that holds every synced entry, and the log takes new writes. In reorder mode a
    middle page of the tail is lost while later pages survive: load must cut there (the
    watermark shows the damage was never synced) rather than refuse to start."""
    mnt = mount_factory(mode, seed=11)
    expected = ents(1, 60, 1) + ents(60, 90, 1, size=700)
    out_of_order = 0
    for round_ in range(12):
        log_dir = mnt.mountpoint / f"raft{round_}"
        batch = 30 if round_ % 2 == 0 else 7  # one 21 KiB unsynced batch, or several smaller ones
        in_child(lambda: _write_log(log_dir, 1, 60, 90, batch=batch))
        mnt.cut()
        with caplog.at_level(logging.WARNING, logger="zraft.logstore"):
            with FileLogStore(log_dir, segment_size=64 << 10) as store:
                entries = store.load().entries
                assert len(entries) >= 59 and entries == tuple(expected[:len(entries)]), round_
                store.save(None, ents(len(entries) + 1, len(entries) + 2, 2), sync=True)
        out_of_order += "out of order" in caplog.text
        caplog.clear()
        with FileLogStore(log_dir, segment_size=64 << 10) as store:
            assert store.load().entries == entries + tuple(ents(len(entries) + 1, len(entries) + 2, 2))
    print(f"{mode}: {out_of_order} of 12 cuts kept records after a lost page")
    if mode == "reorder":
        assert out_of_order > 0, "reorder never lost a middle page while keeping a later one"


def _restart_and_extend(log_dir: Path, loaded: int, hi: int) -> FileLogStore:
    store = FileLogStore(log_dir, segment_size=64 << 10)
    assert len(store.load().entries) == loaded
    store.save(None, ents(loaded + 1, hi, 1, size=700), sync=False)
    return store


@needs_fuse
def test_logstore_restart_keeps_what_it_loaded(mount_factory: Callable[..., Mount]) -> None:
    """The process dies with an unsynced batch in the page cache, the machine does not; a
    restart loads that batch (and Raft may act on it), writes more without syncing, and only
    then the power goes. What the restart loaded must survive the cut, and load must not
    refuse: the restart's watermark says it was durable, which is true only because load
    fsyncs what it loaded."""
    mnt = mount_factory("reorder", seed=5)
    expected = ents(1, 60, 1) + ents(60, 120, 1, size=700)
    for round_ in range(6):
        log_dir = mnt.mountpoint / f"raft{round_}"
        in_child(lambda: _write_log(log_dir, 1, 60, 90, batch=30))
        in_child(lambda: _restart_and_extend(log_dir, 89, 120))
        mnt.cut()
        with FileLogStore(log_dir, segment_size=64 << 10) as store:
            entries = store.load().entries
        assert len(entries) >= 89 and entries == tuple(expected[:len(entries)]), round_


# == the SQLite store on lazyfs =================================================================
def _insert(i: int) -> bytes:
    return encode_command(Command([Statement("INSERT INTO t(id, v) VALUES(?, ?)", [i, "x" * 300])]))


def _apply_store(path: Path, lo: int, checkpoint_at: int, hi: int) -> Database:
    db = Database(path)
    if lo == 1:
        db.apply_entries([(1, encode_command(Command([Statement("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")])))])
        lo = 2
    for i in range(lo, hi + 1):
        db.apply_entries([(i, _insert(i))])
        if i == checkpoint_at:  # what a checkpoint writes to the database file is fsynced
            raw = apsw.Connection(str(path))
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            raw.close()
    return db


@needs_fuse
@pytest.mark.parametrize("mode", ["drop", "torn", "reorder"])
def test_sqlite_store_survives_power_cuts(mount_factory: Callable[..., Mount], mode: str) -> None:
    """synchronous=NORMAL: a WAL commit is not fsynced, so a cut may roll the database back to
    its last checkpoint (the Raft log replays the rest); it must never be damaged, and the
    applied index must match the rows. Another process reads it while it is written
    (the api process does), which needs the -shm mmap to work on the mount."""
    mnt = mount_factory(mode, seed=7)
    path = mnt.mountpoint / "db.sqlite"
    applied = 0
    for cycle in range(3):
        lo, checkpoint_at, hi = applied + 1, applied + 40, applied + 120
        in_child(lambda: _apply_store(path, lo, checkpoint_at, hi))
        reader = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)  # as the api does
        assert reader.execute("SELECT max(id) FROM t").get == hi
        reader.close()
        mnt.cut()
        check = apsw.Connection(str(path))
        assert check.execute("PRAGMA integrity_check").get == "ok"
        check.close()
        with Database(path) as db:
            applied = db.applied_index()
            rows = db.query([Statement("SELECT count(*), max(id) FROM t")])[0]["values"]
            assert checkpoint_at <= applied <= hi, (cycle, applied)
            assert rows == [[applied - 1, applied]]
            if mode == "drop":
                assert applied == checkpoint_at


@needs_fuse
def test_a_failed_fsync_keeps_the_data_readable_and_retries(tmp_path: Path) -> None:
    """Regression: an fsync that hit a full disk used to drop the pending bytes, so the
    program read back stale data it never wrote (SQLite called its database malformed).
    A kernel keeps dirty pages after a failed writeback; so must lazyfs."""
    from tests.component.disk_full_support import small_tmpfs

    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        balloon = disk / "balloon"
        balloon.write_bytes(bytes(1536 << 10))
        with Mount(disk / "backing", tmp_path / "mnt", log=tmp_path / "lazyfs.log") as mount:
            data = os.urandom(1 << 20)
            fd = os.open(mount.mountpoint / "f", os.O_CREAT | os.O_RDWR)
            try:
                os.pwrite(fd, data, 0)
                with pytest.raises(OSError) as failed:
                    os.fsync(fd)
                assert failed.value.errno == errno.ENOSPC
                assert os.pread(fd, len(data), 0) == data, "the unsynced bytes must stay readable"
                balloon.unlink()
                os.fsync(fd)
            finally:
                os.close(fd)
            assert (disk / "backing" / "f").read_bytes() == data


@needs_fuse
def test_slow_disk_stalls_every_fsync_until_told_otherwise(mnt: Mount) -> None:
    path = mnt.mountpoint / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        mnt.slow(150)
        started = time.monotonic()
        os.write(fd, b"x")
        os.fsync(fd)
        assert time.monotonic() - started >= 0.15
        assert mnt.slowed_syncs() == 1
        mnt.slow(0)
        started = time.monotonic()
        os.fsync(fd)
        assert time.monotonic() - started < 0.15
        assert mnt.slowed_syncs() == 1
        with pytest.raises(OSError):
            mnt.control.write_text("slow=-5\n")
    finally:
        os.close(fd)
