"""Bulk loads through the log (zraft/store/loading.py): chunks staged inside the database, a
commit that swaps the file in at its index, the same outcome on every node however the
entries are batched, restarted or restored from an image, and bad files answered alike."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from zraft.store import Command, Database, Statement, encode_command
from zraft.store.command import LoadChunk, LoadCommit, encode_load_step, new_load_id
from zraft.store.loading import STAGING_TABLE


def user_file(path: Path, rows: int) -> bytes:
    """A SQLite file as a client would upload it (WAL mode, its own page size)."""
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA page_size=8192; PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE loaded(id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
    with conn:
        conn.executemany("INSERT INTO loaded(name, payload) VALUES (?, randomblob(200))",
                         [(f"row {i}",) for i in range(rows)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.read_bytes()


def load_entries(data: bytes, start: int, chunk: int = 64 << 10, load_id: str | None = None,
                 crc: int | None = None) -> list[tuple[int, bytes]]:
    load_id = load_id or new_load_id()
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    steps: list[LoadChunk | LoadCommit] = [LoadChunk(load_id, seq, piece) for seq, piece in enumerate(pieces)]
    steps.append(LoadCommit(load_id, len(pieces), len(data), zlib.crc32(data) if crc is None else crc))
    return [(start + pos, encode_load_step(step)) for pos, step in enumerate(steps)]


def sql(text: str) -> bytes:
    return encode_command(Command.stamped([Statement(text)], time_ms=0, seed=1))


def rows(db: Database, text: str) -> list[object]:
    values = db.query([Statement(text)])[0].get("values", [])
    assert isinstance(values, list)
    return values


def dump(db: Database) -> list[str]:
    with db.read_connection() as conn:
        return [str(row[0]) for row in conn.execute(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")] + \
            [repr(row) for row in conn.execute("SELECT * FROM loaded ORDER BY id")]


def batches(entries: list[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    for i in range(0, len(entries), size):
        yield entries[i:i + size]


@pytest.fixture
def upload(tmp_path: Path) -> bytes:
    return user_file(tmp_path / "upload.sqlite", 2000)


def test_a_load_replaces_the_database_at_its_commit_index(tmp_path: Path, upload: bytes) -> None:
    db = Database(tmp_path / "node.sqlite")
    db.apply_entries([(1, sql("CREATE TABLE old(x)")), (2, sql("INSERT INTO old VALUES (1)"))])
    entries = load_entries(upload, 3)
    results = db.apply_entries(entries)
    commit_index = entries[-1][0]
    assert [r.results for r in results] == [[] for _ in entries]
    assert db.applied_index() == commit_index
    assert rows(db, "SELECT count(*) FROM loaded") == [[2000]]
    tables = rows(db, "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
    assert ["old"] not in tables and [STAGING_TABLE] not in tables
    db.apply_entries([(commit_index + 1, sql("INSERT INTO loaded(name) VALUES ('after')"))])
    assert rows(db, "SELECT count(*) FROM loaded") == [[2001]]
    db.close()
    reopened = Database(tmp_path / "node.sqlite")
    assert reopened.applied_index() == commit_index + 1
    reopened.close()


def test_every_batching_and_a_restart_mid_load_give_the_same_file(tmp_path: Path, upload: bytes) -> None:
    entries = [(1, sql("CREATE TABLE old(x)"))] + load_entries(upload, 2)
    first = Database(tmp_path / "a.sqlite")
    first.apply_entries(entries)
    second = Database(tmp_path / "b.sqlite")
    half = len(entries) // 2
    for batch in batches(entries[:half], 3):
        second.apply_entries(batch)
    second.close()  # a restart between chunks: staged chunks are applied data
    second = Database(tmp_path / "b.sqlite")
    second.apply_entries(entries[half - 2:])  # a replay of entries already applied is skipped
    assert dump(first) == dump(second)
    assert first.applied_index() == second.applied_index() == entries[-1][0]


def test_an_image_taken_mid_load_carries_the_staged_chunks(tmp_path: Path, upload: bytes) -> None:
    entries = load_entries(upload, 1)
    leader = Database(tmp_path / "leader.sqlite")
    leader.apply_entries(entries[:5])
    leader.snapshot_to(tmp_path / "image.sqlite")
    follower = Database(tmp_path / "follower.sqlite")
    follower.restore_from(tmp_path / "image.sqlite")
    assert follower.applied_index() == 5
    leader.apply_entries(entries[5:])
    follower.apply_entries(entries[5:])
    assert dump(leader) == dump(follower)


@pytest.mark.parametrize("damage", ["crc", "missing chunk", "not sqlite", "superseded"])
def test_a_bad_load_is_an_error_everywhere_and_changes_nothing(tmp_path: Path, upload: bytes, damage: str) -> None:
    db = Database(tmp_path / "node.sqlite")
    db.apply_entries([(1, sql("CREATE TABLE old(x)")), (2, sql("INSERT INTO old VALUES (1)"))])
    data = upload
    if damage == "not sqlite":
        data = b"this is a text file, not a database\n" * 4000
    entries = load_entries(data, 3, crc=0 if damage == "crc" else None)
    if damage == "missing chunk":
        del entries[2]
        entries = [(3 + pos, payload) for pos, (_, payload) in enumerate(entries)]
    if damage == "superseded":  # another load started after this one's chunks: its chunk 0 clears them
        other = load_entries(upload, 0)[0][1]
        entries.insert(len(entries) - 1, (0, other))
        entries = [(3 + pos, payload) for pos, (_, payload) in enumerate(entries)]
    results = db.apply_entries(entries)
    error = results[-1].results[0].get("error")
    assert isinstance(error, str) and ("failed" in error or "invalid SQLite data" in error)
    assert db.applied_index() == entries[-1][0]
    assert rows(db, "SELECT x FROM old") == [[1]]
    assert rows(db, f"SELECT count(*) FROM {STAGING_TABLE} WHERE load <> (SELECT max(load) FROM {STAGING_TABLE})"
                    ) in ([[0]], [])


def test_a_damaged_file_with_the_right_checksum_fails_quick_check(tmp_path: Path, upload: bytes) -> None:
    broken = bytearray(upload)
    for offset in range(8192 * 2 + 100, len(broken), 8192):  # garble every page's content after the schema
        broken[offset:offset + 64] = b"\xff" * 64
    db = Database(tmp_path / "node.sqlite")
    results = db.apply_entries(load_entries(bytes(broken), 1))
    error = results[-1].results[0].get("error")
    assert isinstance(error, str) and error.startswith("invalid SQLite data")
    assert rows(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'loaded'") == [[0]]


def test_scratch_files_a_crash_left_are_removed_at_start(tmp_path: Path) -> None:
    from zraft.api.backup_files import clean_scratch

    (tmp_path / "node.sqlite.load").write_bytes(b"half an assembled file")
    Database(tmp_path / "node.sqlite").close()
    assert not (tmp_path / "node.sqlite.load").exists()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    for name in ("load-12-ab.sqlite", "backup-x.sqlite", "keep.txt"):
        (scratch / name).write_bytes(b"x")
    assert clean_scratch(scratch) == 2 and [p.name for p in scratch.iterdir()] == ["keep.txt"]
