"""Snapshot images (zraft/store/image.py): exported from the live files while a writer and
checkpointers run, received in pieces with resumes, recovered, and installed crash-safely.

ZRAFT_SLOW=1 runs the under-fire test for longer and the 1 GB timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from zraft.store import image, meta
from zraft.store.image import (
    HEADER_SIZE, INSTALL_STEPS, Export, Generation, ImageError, InstallBusy, Received, Receiver,
)

SLOW = os.environ.get("ZRAFT_SLOW") == "1"
PAGE = 4096
FRAME = PAGE + 24


# -- helpers -------------------------------------------------------------------------------


def open_writer(path: Path, autocheckpoint: int = 1000) -> apsw.Connection:
    """A connection set up like the store's writer (WAL, synchronous=NORMAL, meta table)."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(5000)
    conn.execute(f"PRAGMA page_size={PAGE}").fetchall()
    assert conn.execute("PRAGMA journal_mode=WAL").get == "wal"
    conn.execute("PRAGMA synchronous=NORMAL").fetchall()
    conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}").fetchall()
    conn.execute(f"BEGIN IMMEDIATE; {meta.DDL}; {meta.seed_sql()}; COMMIT")
    return conn


def commit(conn: apsw.Connection, index: int, sql: str = "", params: tuple[object, ...] = ()) -> None:
    """One transaction that sets the applied index along with ``sql``."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE _zraft_meta SET value = ? WHERE key = 'applied_index'", (meta.encode(index),))
    if sql:
        conn.execute(sql, params)
    conn.execute("COMMIT")


def applied_of(path: Path | str) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        state = meta.read(conn)
        assert state is not None
        return state.applied_index
    finally:
        conn.close()


def digest(path: Path | str) -> dict[str, str]:
    """A hash of every table's rows (in rowid order), by table name."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        out = {}
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
        for name in names:
            h = hashlib.sha256()
            for row in conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid'):
                h.update(repr(row).encode())
            out[name] = h.hexdigest()
        return out
    finally:
        conn.close()


def integrity(path: Path | str) -> str:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def pull(export: Export, receiver: Receiver, rng: random.Random, *, max_chunk: int = 200_000,
         lose: float = 0.0, repeat: float = 0.0, pause: float = 0.0, slow_wal: bool = False) -> dict[str, int]:
    """Move the whole stream, in random-sized reads. ``lose``: a read never arrives and the
    puller resumes at ``receiver.received``; ``repeat``: an earlier read arrives again (the
    same bytes); ``slow_wal``: the WAL part goes in small reads with pauses (so that the
    writer restarts the WAL and outruns the copy while it is in the WAL's first frames).
    Returns counts of what happened."""
    stats = {"reads": 0, "lost": 0, "repeated": 0}
    sent: list[tuple[int, bytes]] = []
    offset = receiver.received
    wal_start = HEADER_SIZE + export.header.db_length
    while receiver.received < export.size:
        in_wal = wal_start <= offset < export.header.body_size
        data = export.read(offset, rng.randint(1, FRAME if slow_wal and in_wal else max_chunk))
        stats["reads"] += 1
        if slow_wal and in_wal and offset < wal_start + 64 * FRAME:
            time.sleep(0.002)
        if pause and rng.random() < pause:
            time.sleep(rng.random() * 0.01)
        if lose and rng.random() < lose:
            stats["lost"] += 1
            offset = receiver.received  # the connection broke; ask the receiver where to go on
            continue
        receiver.write(offset, data)
        sent.append((offset, data))
        if repeat and rng.random() < repeat:
            stats["repeated"] += 1
            receiver.write(*rng.choice(sent))
        offset = receiver.received
    return stats


def stream_of(export: Export) -> bytes:
    return export.read(0, export.size)


def feed(staging: Path, data: bytes) -> Receiver:
    receiver = Receiver(staging)
    receiver.write(0, data)
    return receiver


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[Path, apsw.Connection]]:
    """A database with two tables, an index and blobs, applied index 500, part of it only in
    the WAL; the writer stays open."""
    path = tmp_path / "src" / "db.sqlite"
    path.parent.mkdir()
    conn = open_writer(path, autocheckpoint=0)
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB); CREATE TABLE u(a TEXT, b REAL);"
                 "CREATE INDEX u_a ON u(a)")
    rng = random.Random(1)
    for i in range(1, 501):
        commit(conn, i, "INSERT INTO t(v) VALUES(?)", (rng.randbytes(rng.randint(1, 3000)),))
        if i % 3 == 0:
            conn.execute("INSERT INTO u VALUES(?, ?)", (f"row {i}", i / 7))
        if i == 300:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    yield path, conn
    conn.close()


def make_live(path: Path, rows: int = 50, applied: int = 7) -> dict[str, str]:
    """A different database at ``path``, left as a kill -9 leaves it: content in the WAL only,
    not checkpointed. Returns its digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / "scratch-live.sqlite"
    conn = open_writer(scratch, autocheckpoint=0)
    conn.execute("CREATE TABLE old(x)")
    for i in range(rows):
        commit(conn, applied if i == rows - 1 else i, "INSERT INTO old VALUES(?)", (f"old {i}" * 50,))
    assert os.path.getsize(str(scratch) + "-wal") > 0
    shutil.copyfile(scratch, path)  # raw copies of a quiet database + WAL: a crashed node's files
    shutil.copyfile(str(scratch) + "-wal", str(path) + "-wal")
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(scratch) + suffix).unlink(missing_ok=True)
    want = digest(path)
    assert os.path.getsize(str(path) + "-wal") > 0  # a read-only open leaves the WAL alone
    return want


# -- round trip ----------------------------------------------------------------------------


def test_round_trip_with_resumes_then_install(source: tuple[Path, apsw.Connection], tmp_path: Path) -> None:
    path, writer = source
    want = digest(path)
    rng = random.Random(2)
    with image.open_export(path) as export:
        assert export.applied_index == 500
        assert export.header.wal_length > 0 and export.header.db_length % PAGE == 0
        receiver = Receiver(tmp_path / "staging")
        # in random pieces; twice the transfer "breaks" and resumes from an arbitrary earlier
        # offset (bytes already kept are sent again, and must match)
        offset, breaks = 0, 0
        while receiver.received < export.size:
            data = export.read(offset, rng.randint(1, 70_000))
            receiver.write(offset, data)
            offset += len(data)
            if breaks < 2 and offset > export.size * (breaks + 1) / 3:
                breaks += 1
                offset = rng.randint(0, receiver.received)
        stats = pull(export, Receiver(tmp_path / "staging2"), rng, lose=0.2, repeat=0.2)
        assert stats["lost"] and stats["repeated"]
    received = receiver.finish()
    assert received.applied_index == 500 and received.page_size == PAGE
    assert received.bytes == os.path.getsize(received.path)
    assert sorted(os.listdir(tmp_path / "staging")) == [image.IMAGE_NAME]
    with open(received.path, "rb") as f:
        assert f.read(20)[18:20] == b"\x02\x02"  # still a WAL database
    assert digest(received.path) == want

    live = tmp_path / "live" / "db.sqlite"
    old = make_live(live)
    assert digest(live) == old
    assert image.install(received, live) == 1
    assert digest(live) == want
    assert applied_of(live) == 500
    assert integrity(live) == "ok"
    assert not (tmp_path / "staging").exists()
    with Generation(live) as gen:
        assert gen.value() == 1
    writer.close()


def test_the_image_continues_like_the_source(source: tuple[Path, apsw.Connection], tmp_path: Path) -> None:
    """The installed file is a working database in WAL mode that takes the next writes."""
    path, writer = source
    with image.open_export(path) as export:
        received = feed(tmp_path / "staging", stream_of(export)).finish()
    live = tmp_path / "live.sqlite"
    image.install(received, live)
    other = open_writer(live)
    for conn in (writer, other):
        commit(conn, 501, "INSERT INTO t(v) VALUES(x'00')")
    other.close()
    assert digest(live) == digest(path)


# -- consistency under fire -------------------------------------------------------------------


def payload(index: int, salt: int) -> bytes:
    rng = random.Random(index * 2 + salt)
    return rng.randbytes(rng.randint(16, 1500))


def apply_model(rows: dict[int, bytes], i: int) -> None:
    rows[i] = payload(i, 0)
    if i > 1 and i // 2 in rows:
        rows[i // 2] = payload(i, 1)
    if i % 5 == 0:
        rows.pop(i - 40, None)


class Model:
    """The rows of table t at any applied index, replayed from the nearest saved state."""

    def __init__(self) -> None:
        self._saved: dict[int, dict[int, bytes]] = {0: {}}

    def at(self, index: int) -> dict[int, bytes]:
        base = max(k for k in self._saved if k <= index)
        rows = dict(self._saved[base])
        for i in range(base + 1, index + 1):
            apply_model(rows, i)
            if i % 500 == 0:
                self._saved[i] = dict(rows)
        return rows


def writer_loop(path: Path, stop: threading.Event, head: list[int], rng: random.Random,
                errors: list[BaseException]) -> None:
    try:
        conn = open_writer(path, autocheckpoint=rng.choice([20, 50, 200, 1000]))
        conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
        i = 0
        while not stop.is_set():
            i += 1
            head[0] = i  # before the commit: an export may see it before this thread runs again
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE _zraft_meta SET value = ? WHERE key = 'applied_index'", (meta.encode(i),))
            conn.execute("INSERT INTO t(k, v) VALUES(?, ?)", (i, payload(i, 0)))
            if i > 1:
                conn.execute("UPDATE t SET v = ? WHERE k = ?", (payload(i, 1), i // 2))
            if i % 5 == 0:
                conn.execute("DELETE FROM t WHERE k = ?", (i - 40,))
            conn.execute("COMMIT")
            if rng.random() < 0.05:
                time.sleep(rng.random() * 0.003)  # lets checkpoints catch up: read-mark 0 exports
        conn.close()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def checkpoint_loop(path: Path, stop: threading.Event, rng: random.Random, errors: list[BaseException],
                    counts: dict[str, int]) -> None:
    try:
        conn = apsw.Connection(str(path))
        while not stop.is_set():
            mode = rng.choice(["PASSIVE", "FULL", "RESTART", "TRUNCATE"])
            conn.set_busy_timeout(rng.choice([0, 5, 20]))
            try:
                busy, _, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").get
                counts[f"{mode}{'-busy' if busy else ''}"] = counts.get(f"{mode}{'-busy' if busy else ''}", 0) + 1
            except apsw.BusyError:
                counts[f"{mode}-busy"] = counts.get(f"{mode}-busy", 0) + 1
            time.sleep(rng.random() * 0.004)
        conn.close()
    except BaseException as exc:
        errors.append(exc)


def test_export_under_fire_recovers_exact_states(tmp_path: Path) -> None:
    """A writer commits (each transaction bumps the applied index and writes rows that are a
    function of it) while autocheckpoints and PASSIVE/FULL/RESTART/TRUNCATE checkpoints from
    another connection run; every image recovers to exactly the state of one applied index at
    or after the one its export saw, and passes integrity_check."""
    seed = int(os.environ.get("ZRAFT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    budget = 60.0 if SLOW else 9.0
    path = tmp_path / "db.sqlite"
    stop, head = threading.Event(), [0]
    errors: list[BaseException] = []
    counts: dict[str, int] = {}
    threads = [threading.Thread(target=writer_loop, args=(path, stop, head, random.Random(seed + 1), errors)),
               threading.Thread(target=checkpoint_loop, args=(path, stop, random.Random(seed + 2), errors, counts))]
    threads[0].start()
    while head[0] < 200 and not errors:
        time.sleep(0.01)
    threads[1].start()
    model = Model()
    stats = {"exports": 0, "later": 0, "wal_dropped": 0, "lost": 0, "refused_overlap": 0,
             "odd_resume": 0, "odd_resume_refused": 0}
    deadline = time.monotonic() + budget
    try:
        n = 0
        while time.monotonic() < deadline and not errors:
            n += 1
            staging = tmp_path / f"staging{n}"
            with image.open_export(path) as export:
                seen = export.applied_index
                receiver = Receiver(staging)
                odd = rng.random() < 0.1
                if odd:
                    # a resume at an offset where no read ended: allowed to be refused, never wrong
                    stats["odd_resume"] += 1
                    first = export.read(0, rng.randint(HEADER_SIZE, export.size))
                    receiver.write(0, first)
                    time.sleep(0.005)
                    back = rng.randint(0, len(first))
                    export.read(back, rng.randint(1, 100_000))  # lost on the way
                    pass_stats = pull(export, receiver, rng, max_chunk=300_000, pause=0.05)
                else:
                    try:
                        pass_stats = pull(export, receiver, rng, max_chunk=300_000, lose=0.05, repeat=0.05,
                                          pause=0.05, slow_wal=rng.random() < 0.3)
                    except ImageError as exc:
                        assert "differ" in str(exc)
                        stats["refused_overlap"] += 1
                        pass_stats = pull(export, receiver, rng, max_chunk=300_000)
                stats["lost"] += pass_stats["lost"]
                dropped = export.wal_dropped
            try:
                received = receiver.finish()
            except ImageError as exc:
                assert odd and "checksum" in str(exc), (seed, exc)
                stats["odd_resume_refused"] += 1
                continue
            stats["exports"] += 1
            stats["wal_dropped"] += dropped
            assert seen <= received.applied_index <= head[0], seed
            stats["later"] += received.applied_index > seen
            conn = apsw.Connection(received.path, flags=apsw.SQLITE_OPEN_READONLY)
            rows = dict(conn.execute("SELECT k, v FROM t"))
            assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"], seed
            conn.close()
            assert rows == model.at(received.applied_index), (seed, received.applied_index)
            shutil.rmtree(staging)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    print(f"\nseed={seed} head={head[0]} {stats} checkpoints={counts}")
    assert stats["exports"] >= 10


# -- the WAL races, one by one ----------------------------------------------------------------


def three_rows(path: Path) -> apsw.Connection:
    """Rows 1..3, each on a page of its own, checkpointed; then index 1 rewrites row 1, index 2
    row 2, index 3 row 1 again, all in the WAL (two frames each: meta page, row page)."""
    conn = open_writer(path, autocheckpoint=0)
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("INSERT INTO t VALUES(1, zeroblob(3000)), (2, zeroblob(3000)), (3, zeroblob(3000))")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    for index, k in ((1, 1), (2, 2), (3, 1)):
        commit(conn, index, "UPDATE t SET v = ? WHERE k = ?", (bytes([index]) * 3000, k))
    return conn


def rows_of(path: Path | str) -> dict[int, bytes]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {k: v[:1] for k, v in conn.execute("SELECT k, v FROM t")}
    finally:
        conn.close()


def naive_recovery(stream: bytes, where: Path) -> Path:
    """What a receiver that ignored the trailer's flag would recover (main file + WAL part)."""
    header = image.ImageHeader.decode(stream[:HEADER_SIZE])
    where.mkdir()
    db = where / "naive.sqlite"
    db.write_bytes(stream[HEADER_SIZE:HEADER_SIZE + header.db_length])
    Path(str(db) + "-wal").write_bytes(stream[HEADER_SIZE + header.db_length:header.body_size])
    return db


def test_wal_restart_during_export_is_detected(tmp_path: Path) -> None:
    """Read-mark 0 (WAL fully backfilled when the export began): the writer restarts the WAL
    after the export copied the old WAL header and the first old frames. Replaying that
    prefix over the main file gives a state that never existed; the exporter sees the WAL
    header change and tells the receiver to drop the WAL part."""
    writer = three_rows(tmp_path / "db.sqlite")
    assert writer.execute("PRAGMA wal_checkpoint(PASSIVE)").get == (0, 6, 6)  # all backfilled, not reset
    with image.open_export(tmp_path / "db.sqlite") as export:
        assert export.applied_index == 3
        cut = HEADER_SIZE + export.header.db_length + 32 + 2 * FRAME  # WAL header + index 1's frames
        first = export.read(0, cut)
        assert not export.wal_dropped
        # restarts the WAL: three frames (meta, row 2, row 3) over old frames 1..3; 1 and 2
        # were copied already, 3 was not
        commit(writer, 4, "UPDATE t SET v = ? WHERE k IN (2, 3)", (b"\x04" * 3000,))
        stream = first + export.read(cut, export.size)
        assert export.wal_dropped
    naive = naive_recovery(stream, tmp_path / "naive")
    assert applied_of(naive) == 1
    assert rows_of(naive) == {1: b"\x01", 2: b"\x02", 3: b"\x00"}  # index 1 never had row 2 = 2
    received = feed(tmp_path / "staging", stream).finish()
    assert received.applied_index == 3
    assert rows_of(received.path) == {1: b"\x03", 2: b"\x02", 3: b"\x00"}
    writer.close()


def test_truncate_checkpoint_during_export_is_detected(tmp_path: Path) -> None:
    """Read-mark 0 again, and a TRUNCATE checkpoint (possible then) cuts the WAL to zero while
    it is being copied: reads past its end come back as zeros, and the WAL part is dropped."""
    writer = three_rows(tmp_path / "db.sqlite")
    writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    with image.open_export(tmp_path / "db.sqlite") as export:
        first = export.read(0, HEADER_SIZE + export.header.db_length + 100)
        other = apsw.Connection(str(tmp_path / "db.sqlite"))
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").get == (0, 0, 0)
        assert os.path.getsize(str(tmp_path / "db.sqlite-wal")) == 0
        stream = first + export.read(len(first), export.size)
        assert export.wal_dropped
        other.close()
    received = feed(tmp_path / "staging", stream).finish()
    assert received.applied_index == 3 and rows_of(received.path) == {1: b"\x03", 2: b"\x02", 3: b"\x00"}
    writer.close()


def test_checkpoint_during_export_is_repaired_by_the_wal(tmp_path: Path) -> None:
    """Read-mark > 0: a checkpoint rewrites pages of the main file while it is being copied,
    so the copied main file is neither the file before nor the file after; the WAL prefix,
    which such a reader keeps from being restarted, overlays every page that changed."""
    db = tmp_path / "db.sqlite"
    writer = three_rows(db)
    before = db.read_bytes()
    with image.open_export(db) as export:
        assert export.applied_index == 3
        half = HEADER_SIZE + export.header.db_length // 2
        first = export.read(0, half)
        other = apsw.Connection(str(db))
        other.set_busy_timeout(50)
        # RESTART and TRUNCATE cannot restart the WAL under this reader: they report busy
        for mode in ("RESTART", "TRUNCATE"):
            assert other.execute(f"PRAGMA wal_checkpoint({mode})").get[0] == 1
        commit(writer, 4, "UPDATE t SET v = ? WHERE k = 3", (b"\x04" * 3000,))  # appended, not restarted
        # PASSIVE backfills up to the reader's mark (the whole snapshot), not index 4
        assert other.execute("PRAGMA wal_checkpoint(PASSIVE)").get == (0, 8, 6)
        after = db.read_bytes()
        stream = first + export.read(half, export.size)
        assert not export.wal_dropped
        other.close()
    shipped_db = stream[HEADER_SIZE:HEADER_SIZE + len(before)]
    assert shipped_db != before and shipped_db != after  # a torn copy of the main file...
    received = feed(tmp_path / "staging", stream).finish()
    assert received.applied_index in (3, 4)  # ...that recovers to a committed state
    want = {1: b"\x03", 2: b"\x02", 3: b"\x00" if received.applied_index == 3 else b"\x04"}
    assert rows_of(received.path) == want and integrity(received.path) == "ok"
    writer.close()


def test_export_needs_a_wal_database_with_the_meta_table(tmp_path: Path) -> None:
    plain = tmp_path / "plain.sqlite"
    conn = apsw.Connection(str(plain))
    conn.execute("CREATE TABLE t(x)")
    with pytest.raises(ImageError, match="journal mode is 'delete'"):
        image.open_export(plain)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    with pytest.raises(ImageError, match="no _zraft_meta"):
        image.open_export(plain)
    conn.close()


def test_an_empty_wal_is_not_shipped(source: tuple[Path, apsw.Connection], tmp_path: Path) -> None:
    path, writer = source
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    with image.open_export(path) as export:
        assert export.header.wal_length == 0
        received = feed(tmp_path / "staging", stream_of(export)).finish()
    assert received.applied_index == 500 and digest(received.path) == digest(path)


# -- bad input ------------------------------------------------------------------------------


@pytest.fixture
def small_stream(tmp_path: Path) -> bytes:
    path = tmp_path / "small" / "db.sqlite"
    path.parent.mkdir()
    conn = open_writer(path, autocheckpoint=0)
    conn.execute("CREATE TABLE t(x)")
    for i in range(1, 40):
        commit(conn, i, "INSERT INTO t VALUES(?)", (i * 1000,))
    with image.open_export(path) as export:
        data = stream_of(export)
        assert export.header.wal_length > 0
    conn.close()
    return data


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    """A live database and a check that it is untouched."""
    path = tmp_path / "live" / "db.sqlite"
    want = make_live(path)
    names = (path.name, path.name + "-wal")
    files = {name: (path.parent / name).read_bytes() for name in names}

    def untouched() -> None:
        assert {name: (path.parent / name).read_bytes() for name in names} == files
        assert digest(path) == want

    return path, untouched


def corrupt(data: bytes, at: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[at] ^= 1 << bit
    return bytes(out)


def header_with(data: bytes, **fields: int) -> bytes:
    """``data`` with header fields replaced (and the header checksum made right again)."""
    h = image.ImageHeader.decode(data[:HEADER_SIZE])
    values = {"version": h.version, "page_size": h.page_size, "applied_index": h.applied_index,
              "db_length": h.db_length, "wal_length": h.wal_length, **fields}
    body = image._HEADER_BODY.pack(image.MAGIC, values["version"], 0, values["page_size"],
                                   values["applied_index"], values["db_length"], values["wal_length"])
    return body + zlib.crc32(body).to_bytes(4, "big") + data[HEADER_SIZE:]


def test_bad_streams_are_refused_with_a_reason(small_stream: bytes, live: tuple[Path, Callable[[], None]],
                                               tmp_path: Path) -> None:
    _, untouched = live
    staging = tmp_path / "staging"
    cases: list[tuple[str, bytes]] = [
        ("not a zraft database image: bad magic", b"SQLite format 3\x00" + small_stream[16:]),
        ("image format version 2 is newer than this zraft reads", header_with(small_stream, version=2)),
        ("image header is damaged", corrupt(small_stream, 30)),
        ("is not a whole number of 4096-byte pages", header_with(small_stream, db_length=1000)),
        ("image is truncated: received", small_stream[:-1]),
        ("image is truncated: received 10 of at least 44", small_stream[:10]),
        ("image checksum does not match", corrupt(small_stream, HEADER_SIZE + 5000)),
        ("image checksum does not match", corrupt(small_stream, len(small_stream) - 20)),  # a WAL byte
        ("image checksum does not match", corrupt(small_stream, len(small_stream) - 13)),  # trailer flags
        ("image checksum does not match", corrupt(small_stream, len(small_stream) - 10)),  # trailer CRC
        ("bad end magic", corrupt(small_stream, len(small_stream) - 1)),
    ]
    for reason, data in cases:
        with pytest.raises(ImageError, match=reason):
            receiver = Receiver(staging)
            receiver.write(0, data)
            receiver.finish()
        assert not staging.exists(), reason  # the staging files went with the refusal
        untouched()


def test_a_flipped_bit_anywhere_is_caught(small_stream: bytes, live: tuple[Path, Callable[[], None]],
                                          tmp_path: Path) -> None:
    _, untouched = live
    rng = random.Random(3)
    positions = [0, 8, 43, HEADER_SIZE, HEADER_SIZE + 18, len(small_stream) - 1] + \
        [rng.randrange(len(small_stream)) for _ in range(60)]
    for at in positions:
        with pytest.raises(ImageError):
            receiver = Receiver(tmp_path / "staging")
            receiver.write(0, corrupt(small_stream, at, rng.randrange(8)))
            receiver.finish()
        assert not (tmp_path / "staging").exists()
    untouched()


def test_a_bit_flipped_on_disk_after_it_arrived_is_caught(small_stream: bytes, tmp_path: Path) -> None:
    """The checksum is computed from the staging files at finish, not from the bytes as they
    arrived: damage between a write and the install is refused too (the chaos suite's
    install-bitflip does this to a live transfer)."""
    rng = random.Random(5)
    for _ in range(20):
        receiver = Receiver(tmp_path / "staging")
        receiver.write(0, small_stream)
        image_path = tmp_path / "staging" / image.IMAGE_NAME
        for name in (image_path, Path(f"{image_path}-wal")):
            if name.exists() and name.stat().st_size and rng.random() < 0.5:
                break
        data = bytearray(name.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        name.write_bytes(bytes(data))
        with pytest.raises(ImageError, match="checksum does not match"):
            receiver.finish()
        assert not (tmp_path / "staging").exists()


def test_refused_writes_keep_the_receiver_usable(small_stream: bytes, tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "staging")
    receiver.write(0, small_stream[:5000])
    with pytest.raises(ImageError, match="would leave a gap: only 5000 bytes received; resume from 5000"):
        receiver.write(5001, small_stream[5001:6000])
    with pytest.raises(ImageError, match=r"bytes at \[4000, 5000\) differ"):
        receiver.write(4000, corrupt(small_stream, 4500)[4000:6000])
    with pytest.raises(ImageError, match="goes past the end"):
        receiver.write(5000, small_stream[5000:] + b"x")
    receiver.write(100, small_stream[100:5000])  # a repeat of what was kept: fine
    receiver.write(4000, small_stream[4000:])
    assert receiver.finish().applied_index == 39


def test_a_damaged_header_ends_the_receiver(small_stream: bytes, tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "staging")
    with pytest.raises(ImageError, match="header is damaged"):
        receiver.write(0, corrupt(small_stream, 20)[:100])
    assert receiver.received == 0 and receiver.header is None and not (tmp_path / "staging").exists()
    with pytest.raises(ImageError, match="finished or aborted"):
        receiver.write(0, small_stream)


def test_an_image_of_a_damaged_database_fails_quick_check(tmp_path: Path) -> None:
    """The CRC only proves the bytes arrived as sent: a sender whose file was already damaged
    is caught by quick_check after recovery."""
    path = tmp_path / "db.sqlite"
    conn = open_writer(path, autocheckpoint=0)
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v)")
    for i in range(1, 300):
        commit(conn, i, "INSERT INTO t VALUES(?, ?)", (i, f"value {i}" * 20))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    with open(path, "r+b") as f:  # scribble over the header of t's root page (page 3)
        f.seek(2 * PAGE)
        f.write(b"\xff" * 100)
    export = image.open_export(path)
    data = stream_of(export)
    export.close()
    with pytest.raises(ImageError, match="quick_check"):
        feed(tmp_path / "staging", data).finish()
    assert not (tmp_path / "staging").exists()


# -- install --------------------------------------------------------------------------------


@pytest.fixture
def golden(source: tuple[Path, apsw.Connection], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A received image (index 500) kept aside, and its digest."""
    path, _ = source
    with image.open_export(path) as export:
        received = feed(tmp_path / "golden-staging", stream_of(export)).finish()
    keep = tmp_path / "golden.sqlite"
    os.replace(received.path, keep)
    return keep, digest(keep)


def staged(golden: Path, where: Path) -> Received:
    where.mkdir(parents=True, exist_ok=True)
    path = where / image.IMAGE_NAME
    shutil.copyfile(golden, path)
    return Received(str(path), 500, PAGE, os.path.getsize(path))


CHILD = """
import json, os, signal, sys
from zraft.store import image
args = json.loads(sys.argv[1])
def step(name):
    if name == args["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)
image.install(image.Received(**args["received"]), args["live"], on_step=step)
"""


@pytest.mark.parametrize("kill_at", INSTALL_STEPS)
def test_kill_9_at_any_step_of_install_leaves_old_or_new(kill_at: str, golden: tuple[Path, dict[str, str]],
                                                         tmp_path: Path) -> None:
    """The live database starts with uncheckpointed content in its WAL (a crashed node), so a
    new file opened beside the old WAL would show; after a kill at each step the live path
    opens as the old database or the new one, whole."""
    golden_path, new = golden
    live = tmp_path / "live" / "db.sqlite"
    old = make_live(live)
    received = staged(golden_path, tmp_path / "staging")
    args = {"kill_at": kill_at, "live": str(live),
            "received": {"path": received.path, "applied_index": 500, "page_size": PAGE, "bytes": received.bytes}}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    state = digest(live)
    after_rename = INSTALL_STEPS.index(kill_at) >= INSTALL_STEPS.index("renamed")
    assert state == (new if after_rename else old)
    assert applied_of(live) == (500 if after_rename else 7)
    assert integrity(live) == "ok"
    with Generation(live) as gen:
        assert gen.value() == (0 if kill_at == "locked" else 1)
    if not after_rename:  # and the install can simply be run again
        image.install(received, live)
        assert digest(live) == new


class Stop(Exception):
    pass


@pytest.mark.parametrize("fail_at", INSTALL_STEPS)
def test_an_error_at_any_step_of_install_leaves_old_or_new(fail_at: str, golden: tuple[Path, dict[str, str]],
                                                           tmp_path: Path) -> None:
    golden_path, new = golden
    live = tmp_path / "live" / "db.sqlite"
    old = make_live(live)
    received = staged(golden_path, tmp_path / "staging")

    def step(name: str) -> None:
        if name == fail_at:
            raise Stop(name)

    with pytest.raises(Stop):
        image.install(received, live, on_step=step)
    after_rename = INSTALL_STEPS.index(fail_at) >= INSTALL_STEPS.index("renamed")
    assert digest(live) == (new if after_rename else old)
    with Generation(live) as gen, gen.exclusive():  # the lock was released
        pass


def test_install_refuses_while_a_reader_holds_the_wal(golden: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    golden_path, _ = golden
    live = tmp_path / "live" / "db.sqlite"
    old = make_live(live)
    reader = apsw.Connection(str(live), flags=apsw.SQLITE_OPEN_READONLY)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM old").get  # a read transaction with a WAL snapshot
    received = staged(golden_path, tmp_path / "staging")
    with pytest.raises(InstallBusy, match="still uses the WAL"):
        image.install(received, live, busy_timeout_ms=100)
    reader.execute("ROLLBACK")
    assert digest(live) == old and os.path.exists(received.path)
    image.install(received, live)
    reader.close()


def test_quiesce_leaves_a_single_file(source: tuple[Path, apsw.Connection]) -> None:
    path, writer = source
    want = digest(path)
    assert os.path.getsize(str(path) + "-wal") > 0
    image.quiesce(writer)
    assert os.path.getsize(str(path) + "-wal") == 0
    writer.close()
    assert not os.path.exists(str(path) + "-wal")
    assert digest(path) == want


def test_readers_keep_the_old_file_until_they_see_the_generation(golden: tuple[Path, dict[str, str]],
                                                                 tmp_path: Path) -> None:
    """The reader protocol: open (and first read) under the shared lock, remember the
    generation, compare it before each read. An old connection keeps reading the old inode,
    consistently, and closing it later does not touch the new file's WAL."""
    golden_path, new = golden
    live = tmp_path / "live" / "db.sqlite"
    make_live(live)
    gen = Generation(live)
    with gen.shared() as seen:
        reader = apsw.Connection(str(live), flags=apsw.SQLITE_OPEN_READONLY)
        count = reader.execute("SELECT count(*) FROM old").get
    assert seen == 0 and count == 50

    installer = threading.Thread(target=image.install, args=(staged(golden_path, tmp_path / "staging"), live))
    with gen.shared():  # an install waits for readers that are opening
        installer.start()
        time.sleep(0.2)
        assert installer.is_alive() and gen.value() == 0
    installer.join(10)
    assert gen.value() == 1 != seen
    assert reader.execute("SELECT count(*) FROM old").get == 50  # still the old inode
    writer = open_writer(live)
    commit(writer, 501, "INSERT INTO t(v) VALUES(x'01')")
    assert os.path.getsize(str(live) + "-wal") > 0
    reader.close()  # SQLite sees its file was moved: no checkpoint, no deleting "the" WAL
    assert os.path.getsize(str(live) + "-wal") > 0
    writer.close()
    with gen.shared():
        fresh = apsw.Connection(str(live), flags=apsw.SQLITE_OPEN_READONLY)
        assert fresh.execute("SELECT count(*) FROM t").get == 501
        state = meta.read(fresh)
        assert state is not None and state.applied_index == 501
    fresh.close()
    gen.close()


HOLDER = """
import apsw, sys, time
conn = apsw.Connection(sys.argv[1], flags=apsw.SQLITE_OPEN_READONLY)
print(conn.execute("SELECT count(*) FROM old").get, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("remove_shm", [False, True])
def test_an_old_shm_still_mapped_elsewhere_would_be_trusted(remove_shm: bool, golden: tuple[Path, dict[str, str]],
                                                            tmp_path: Path) -> None:
    """Why install removes the old -shm: another process still maps it (a reader of the old
    file), so the first opener of the new file does not rebuild it and trusts its header,
    which gives the old database's size."""
    golden_path, new = golden
    live = tmp_path / "live" / "db.sqlite"
    make_live(live)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"50"
        received = staged(golden_path, tmp_path / "staging")
        if remove_shm:
            image.install(received, live)
            assert digest(live) == new
        else:  # install without its step 4
            conn = apsw.Connection(str(live))
            image.quiesce(conn)
            conn.close()
            os.unlink(str(live) + "-wal")
            os.replace(received.path, live)
            with pytest.raises(apsw.CorruptError):
                digest(live)
    finally:
        holder.kill()
        holder.wait()


def test_install_over_nothing(golden: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    golden_path, new = golden
    live = tmp_path / "fresh" / "db.sqlite"
    live.parent.mkdir()
    image.install(staged(golden_path, tmp_path / "staging"), live)
    assert digest(live) == new
    with pytest.raises(ImageError, match="no received image there"):
        image.install(Received(str(tmp_path / "staging" / image.IMAGE_NAME), 500, PAGE, 0), live)


# -- 1 GB, measured -------------------------------------------------------------------------


@pytest.mark.skipif(not SLOW, reason="ZRAFT_SLOW=1: builds a 1 GB database")
def test_one_gigabyte_timing(tmp_path: Path) -> None:
    src = tmp_path / "src.sqlite"
    conn = apsw.Connection(str(src))
    conn.execute("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF").fetchall()
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB, w TEXT); CREATE INDEX t_w ON t(w)")
    conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 240000) "
                 "INSERT INTO t SELECT i, randomblob(3900), hex(randomblob(8)) FROM n")
    conn.close()
    writer = open_writer(src)
    commit(writer, 1000, "INSERT INTO t(v) VALUES(x'00')")
    size = os.path.getsize(src) + os.path.getsize(str(src) + "-wal")
    os.sync()

    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(tmp_path / "copy.sqlite")], check=True)
    t_cp = time.perf_counter() - t0
    fd = os.open(tmp_path / "copy.sqlite", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    t_cp_sync = time.perf_counter() - t0
    os.unlink(tmp_path / "copy.sqlite")
    os.sync()

    t0 = time.perf_counter()
    export = image.open_export(src)
    receiver = Receiver(tmp_path / "staging")
    offset = 0
    while offset < export.size:
        data = export.read(offset, 1 << 20)
        receiver.write(offset, data)
        offset += len(data)
    export.close()
    t_transfer = time.perf_counter() - t0
    received = receiver.finish()
    t_finish = time.perf_counter() - t0 - t_transfer
    live = tmp_path / "live.sqlite"
    make_live(live)
    t1 = time.perf_counter()
    image.install(received, live)
    t_install = time.perf_counter() - t1
    total = t_transfer + t_finish + t_install

    check = apsw.Connection(str(live), flags=apsw.SQLITE_OPEN_READONLY)
    t0 = time.perf_counter()
    assert check.execute("PRAGMA quick_check").get == "ok"
    t_quick = time.perf_counter() - t0
    check.close()
    writer.close()
    gb = size / 1e9
    print(f"\n{gb:.2f} GB: cp {t_cp:.2f} s (+fsync {t_cp_sync:.2f} s); export+transfer {t_transfer:.2f} s, "
          f"finish (recovery, quick_check, checkpoint, fsync) {t_finish:.2f} s, install {t_install:.2f} s, "
          f"total {total:.2f} s; quick_check alone {t_quick:.2f} s = {t_quick / gb:.2f} s/GB")
