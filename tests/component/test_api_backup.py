"""GET /db/backup against a real ApiProcess (fake raft and store) reading a real SQLite file:
every rqlite parameter (fmt, compress, vacuum, tables), the streamed response and its
headers, scratch files removed whatever happens (a client that leaves mid-stream, one that
stops reading, a full disk), the concurrency cap, and the scratch folder cleaned at start."""

from __future__ import annotations

import gzip
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.component.disk_full_support import small_tmpfs
from tests.component.test_api_http import Env, start_env, stop_env
from tests.component.test_api_support import ApiNode
from zraft.api import backup_files
from zraft.api.backup_stream import BackupSpec
from zraft.api.errors import BadRequest
from zraft.api.http import scratch_dir
from zraft.config import ApiSettings, ConfigError
from zraft.download import BackupRequest, DownloadError, download

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env() -> Iterator[Env]:
    e = start_env()
    yield e
    stop_env(e)


def make_db(env: Env, *sql: str) -> Path:
    """The node's database, as the store would have it: WAL mode, zraft's table in it."""
    path = env.node.config.db_path
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS _zraft_meta(key TEXT PRIMARY KEY, value)")
    conn.execute("INSERT OR REPLACE INTO _zraft_meta VALUES('applied', 7)")
    for s in sql:
        conn.execute(s)
    conn.commit()
    conn.close()
    return path


def big_db(env: Env, megabytes: int) -> Path:
    return make_db(env, "CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)",
                   f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {megabytes * 16}) "
                   "INSERT INTO big(b) SELECT randomblob(65536) FROM n")


def open_db(data: bytes, tmp_path: Path, name: str = "copy.sqlite") -> sqlite3.Connection:
    path = tmp_path / name
    path.write_bytes(data)
    return sqlite3.connect(path)


def scratch_files(env: Env) -> list[str]:
    return sorted(p.name for p in scratch_dir(env.node.config).glob("backup-*"))


def open_scratch_fds() -> list[str]:
    """Scratch files this test process (where the api runs) holds open, removed or not."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "/backup-" in target:
            found.append(target)
    return found


def backup_stats(env: Env) -> dict[str, int]:
    status, doc = env.node.json("GET", "/debug/vars?key=backup")
    assert status == 200
    return dict(doc)


def wait_until(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def slow_client(env: Env, path: str) -> socket.socket:
    """A client with a tiny receive window that has sent its request and read nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", env.node.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


# == formats ==================================================================================
def test_binary_and_delete_are_plain_rollback_journal_files_without_zraft_meta(env: Env, tmp_path: Path) -> None:
    make_db(env, "CREATE TABLE foo(id INTEGER PRIMARY KEY, name TEXT)", "INSERT INTO foo(name) VALUES('fiona')")
    for query in ("", "?fmt=delete", "?fmt=DELETE", "?fmt=zip"):
        status, headers, data = env.node.request("GET", f"/db/backup{query}")
        assert status == 200, query
        assert headers["content-type"] == "application/octet-stream"
        assert int(headers["content-length"]) == len(data) and "content-encoding" not in headers
        assert headers["x-rqlite-version"].startswith("v") and headers["x-rqlite-served-by"]
        assert data[:16] == b"SQLite format 3\x00" and data[18:20] == b"\x01\x01"  # not WAL
        conn = open_db(data, tmp_path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("foo",)]
        assert conn.execute("SELECT * FROM foo").fetchall() == [(1, "fiona")]
        conn.close()


def test_sql_dump_has_rqlite_shape_and_tables_limits_it(env: Env) -> None:
    make_db(env, "CREATE TABLE foo(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)",
            "CREATE TABLE bar(a)", "CREATE TABLE baz(a)", "CREATE INDEX bar_a ON bar(a)",
            "CREATE VIEW v AS SELECT * FROM baz", "INSERT INTO foo(name) VALUES('fiona')",
            "INSERT INTO bar VALUES(1)", "INSERT INTO baz VALUES(2)")
    status, headers, whole = env.node.request("GET", "/db/backup?fmt=sql")
    assert status == 200 and headers["content-type"] == "application/sql"
    assert whole.decode().splitlines() == [
        "PRAGMA foreign_keys=OFF;", "BEGIN TRANSACTION;",
        "CREATE TABLE bar(a);", 'INSERT INTO "bar" VALUES(1);',
        "CREATE TABLE baz(a);", 'INSERT INTO "baz" VALUES(2);',
        "CREATE TABLE foo(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);", "INSERT INTO \"foo\" VALUES(1,'fiona');",
        "CREATE INDEX bar_a ON bar(a);", "CREATE VIEW v AS SELECT * FROM baz;",
        'DELETE FROM "sqlite_sequence";', "INSERT INTO \"sqlite_sequence\" VALUES('foo',1);", "COMMIT;"]
    status, _, part = env.node.request("GET", "/db/backup?fmt=sql&tables=foo,%20bar,,nosuch,_zraft_meta")
    assert status == 200
    assert part.decode().splitlines() == [
        "PRAGMA foreign_keys=OFF;", "BEGIN TRANSACTION;",
        "CREATE TABLE bar(a);", 'INSERT INTO "bar" VALUES(1);',
        "CREATE TABLE foo(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);", "INSERT INTO \"foo\" VALUES(1,'fiona');",
        "CREATE INDEX bar_a ON bar(a);",
        "DELETE FROM \"sqlite_sequence\" WHERE name = 'foo';", "INSERT INTO \"sqlite_sequence\" VALUES('foo',1);",
        "COMMIT;"]
    # a partial dump loads into an empty database
    conn = sqlite3.connect(":memory:")
    conn.executescript(part.decode())
    assert conn.execute("SELECT name FROM foo").fetchall() == [("fiona",)]
    # rqlite ignores tables for the binary formats
    assert env.node.request("GET", "/db/backup?tables=foo")[2] == env.node.request("GET", "/db/backup")[2]


def test_compress_gzips_the_same_bytes_without_content_encoding(env: Env) -> None:
    big_db(env, 3)
    for fmt in ("binary", "sql", "delete"):
        status, headers, plain = env.node.request("GET", f"/db/backup?fmt={fmt}")
        assert status == 200
        status, headers, packed = env.node.request("GET", f"/db/backup?fmt={fmt}&compress")
        assert status == 200 and packed[:2] == b"\x1f\x8b"
        assert "content-encoding" not in headers and "content-length" not in headers  # streamed, chunked
        assert headers["content-type"] == ("application/sql" if fmt == "sql" else "application/octet-stream")
        assert gzip.decompress(packed) == plain, fmt


def test_vacuum_gives_a_compact_copy_and_is_refused_with_sql(env: Env, tmp_path: Path) -> None:
    big_db(env, 2)
    make_db(env, "DELETE FROM big WHERE id > 4")
    status, _, plain = env.node.request("GET", "/db/backup")
    assert status == 200
    for query in ("vacuum", "fmt=delete&vacuum", "vacuum&compress"):
        status, _, data = env.node.request("GET", f"/db/backup?{query}")
        assert status == 200, query
        if "compress" in query:
            data = gzip.decompress(data)
        assert len(data) < len(plain) // 4 and data[18:20] == b"\x01\x01"
        conn = open_db(data, tmp_path)
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (4,)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
    status, _, body = env.node.request("GET", "/db/backup?fmt=sql&vacuum")
    assert (status, body) == (400, b"vacuum is not supported with the SQL format\n")
    assert scratch_files(env) == []


def test_a_backup_is_one_point_in_time_while_the_store_writes(env: Env, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transaction of the writer (another process, as the store is) adds one row to
    each of two tables: a consistent copy has as many rows in both. Small steps, so that the
    copy spans many of the writer's commits."""
    monkeypatch.setattr(backup_files, "COPY_STEP_PAGES", 4)
    path = big_db(env, 8)
    make_db(env, "CREATE TABLE a(x)", "CREATE TABLE b(x)")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])  # another process, as the store is
    try:
        wait_until(lambda: sqlite3.connect(path).execute("SELECT count(*) FROM a").fetchone()[0] > 10, "writes")
        for query in ("", "?fmt=sql"):
            status, _, data = env.node.request("GET", f"/db/backup{query}", timeout=30)
            assert status == 200
            conn = sqlite3.connect(":memory:") if query else open_db(data, tmp_path)
            if query:
                conn.executescript(data.decode())
            a, b = (conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in "ab")
            assert a == b > 10 and conn.execute("SELECT count(*) FROM big").fetchone() == (128,)
            conn.close()
        assert writer.poll() is None  # it wrote all along
    finally:
        writer.kill()
        writer.wait(10)


WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=5)
conn.execute("PRAGMA synchronous=OFF")
end = time.monotonic() + 60
while time.monotonic() < end:
    conn.execute("INSERT INTO a VALUES(1)")
    conn.execute("INSERT INTO b VALUES(1)")
    conn.commit()
"""


def test_backup_spec_follows_rqlite() -> None:
    assert BackupSpec.from_query({}) == BackupSpec("binary")
    assert BackupSpec.from_query({"fmt": "SQL", "tables": " a , b,,", "compress": ""}) == \
        BackupSpec("sql", compress=True, tables=("a", "b"))
    assert BackupSpec.from_query({"fmt": "binary", "tables": "a"}).tables == ()
    assert BackupSpec.from_query({"fmt": "delete", "vacuum": ""}).vacuum
    with pytest.raises(BadRequest):
        BackupSpec.from_query({"fmt": "sql", "vacuum": ""})


# == streaming, and what is left behind ======================================================
def test_a_client_that_leaves_mid_stream_leaves_no_scratch_file(env: Env) -> None:
    big_db(env, 8)
    for query in ("", "?compress", "?fmt=sql"):
        sock = slow_client(env, f"/db/backup{query}")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        wait_until(lambda: open_scratch_fds(), "the stream to be under way")
        assert all(t.endswith("(deleted)") for t in open_scratch_fds())  # the name goes once it is open
        sock.close()
        wait_until(lambda: not open_scratch_fds() and not scratch_files(env), f"scratch released ({query})")
    wait_until(lambda: backup_stats(env)["active"] == 0, "no backup active")
    assert backup_stats(env)["cancelled"] == 3
    assert env.node.request("GET", "/db/backup")[0] == 200  # and the node still serves backups


def test_a_client_that_leaves_during_the_copy_stops_it(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    big_db(env, 2)
    real_copy = backup_files.copy_database
    started = threading.Event()

    def slow_copy(db_path: str, dest: Path, cancel: threading.Event) -> None:
        started.set()
        cancel.wait(10)  # until the request is given up
        real_copy(db_path, dest, cancel)
    monkeypatch.setattr(backup_files, "copy_database", slow_copy)
    sock = slow_client(env, "/db/backup")
    assert started.wait(10) and scratch_files(env)
    sock.close()
    wait_until(lambda: not scratch_files(env), "the copy to stop and its file to go")
    wait_until(lambda: backup_stats(env)["active"] == 0, "no backup active")
    assert backup_stats(env)["cancelled"] == 1


def test_a_client_that_stops_reading_is_cut_off_after_the_idle_timeout() -> None:
    env = start_env(idle_timeout_ms=1000)
    try:
        big_db(env, 8)
        sock = slow_client(env, "/db/backup")
        wait_until(lambda: backup_stats(env)["failed"] == 1, "the stalled backup to be aborted", timeout=15)
        wait_until(lambda: not open_scratch_fds(), "scratch released")
        sock.settimeout(5)
        received = 0
        try:
            while chunk := sock.recv(1 << 16):
                received += len(chunk)
        except ConnectionResetError:
            pass
        sock.close()
        assert received < 8 << 20  # cut short, never a clean end
    finally:
        stop_env(env)


def test_at_most_max_concurrent_backups_at_once() -> None:
    env = start_env(max_concurrent_backups=1)
    try:
        big_db(env, 8)
        first = slow_client(env, "/db/backup")
        wait_until(lambda: backup_stats(env)["active"] == 1, "the first backup to run")
        status, _, body = env.node.request("GET", "/db/backup?fmt=sql")
        assert status == 503 and body.startswith(b"too many backups in progress: at most 1 at once")
        assert backup_stats(env)["refused"] == 1
        first.close()
        wait_until(lambda: backup_stats(env)["active"] == 0, "the first backup to end")
        assert env.node.request("GET", "/db/backup?fmt=sql")[0] == 200
    finally:
        stop_env(env)


def test_concurrent_backups_under_the_cap_all_succeed(env: Env, tmp_path: Path) -> None:
    big_db(env, 2)
    results: list[tuple[int, bytes]] = []

    def fetch() -> None:
        status, _, data = env.node.request("GET", "/db/backup")
        results.append((status, data))
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [s for s, _ in results] == [200, 200]
    conn = open_db(results[0][1], tmp_path)
    assert conn.execute("SELECT count(*) FROM big").fetchone() == (32,)
    conn.close()


def test_a_full_disk_is_a_503_and_leaves_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    big_db(env, 4)
    folder = scratch_dir(env.node.config)
    with small_tmpfs(folder, "1m"):
        status, _, body = env.node.request("GET", "/db/backup")
        assert status == 503 and b"not enough disk space in" in body, body
        # the space check passed, then the disk filled during the copy or the dump
        monkeypatch.setattr(backup_files, "DISK_HEADROOM_BYTES", 0)
        monkeypatch.setattr(backup_files, "database_bytes", lambda _path: 0)
        for query in ("", "?fmt=sql", "?vacuum"):
            status, _, body = env.node.request("GET", f"/db/backup{query}")
            assert status == 503 and body.startswith(b"backup failed: disk full while writing the backup"), body
            assert os.listdir(folder) == [] and not open_scratch_fds()
    assert backup_stats(env)["failed"] == 4


# == the scratch folder and the setting =======================================================
def test_scratch_files_of_an_earlier_run_are_removed_at_start() -> None:
    env = start_env()
    folder = scratch_dir(env.node.config)
    env.node.stop()
    (folder / "backup-stale.sqlite").write_bytes(b"x" * 100)
    (folder / "someone-elses").write_bytes(b"y")
    env.node = ApiNode(env.node.config)
    try:
        assert sorted(os.listdir(folder)) == ["someone-elses"]
    finally:
        stop_env(env)


def test_max_concurrent_backups_is_validated() -> None:
    assert ApiSettings().max_concurrent_backups == 2
    with pytest.raises(ConfigError, match="max_concurrent_backups"):
        ApiSettings(max_concurrent_backups=17)


# == zraft backup, the shell's .backup and .dump FILE, and the download they share ===========
ROOT = Path(__file__).resolve().parents[2]


def zraft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zraft", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_zraft_backup_streams_each_format_into_file(env: Env, tmp_path: Path) -> None:
    make_db(env, "CREATE TABLE foo(a)", "CREATE TABLE bar(b)", "INSERT INTO foo VALUES('fiona')",
            "INSERT INTO bar VALUES(2)")
    address = f"127.0.0.1:{env.node.port}"
    target = tmp_path / "out.sqlite"
    done = zraft("backup", "--http", address, str(target), "--vacuum")
    assert done.returncode == 0, done.stderr
    assert re.search(rf"backup written to {re.escape(str(target))}: [\d,]+ bytes in ", done.stderr)
    assert sorted(os.listdir(tmp_path)) == ["out.sqlite"]  # no .part left
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT a FROM foo").fetchall() == [("fiona",)]
    conn.close()
    dump = tmp_path / "out.sql.gz"
    done = zraft("backup", "--http", address, str(dump), "--fmt", "sql", "--tables", "foo", "--compress",
                 "--noleader", "--progress")
    assert done.returncode == 0, done.stderr
    assert gzip.decompress(dump.read_bytes()) == env.node.request("GET", "/db/backup?fmt=sql&tables=foo")[2]
    assert b"bar" not in gzip.decompress(dump.read_bytes())
    assert re.search(r"out\.sql\.gz: .*\[\d\d:\d\d", done.stderr), done.stderr  # tqdm's bar was drawn


def test_zraft_backup_refuses_what_the_node_would_and_reports_node_errors(env: Env, tmp_path: Path) -> None:
    address = f"127.0.0.1:{env.node.port}"
    for args in (["--fmt", "sql", "--vacuum"], ["--tables", "a"]):
        done = zraft("backup", "--http", address, str(tmp_path / "x"), *args)
        assert done.returncode == 2 and "Error:" in done.stderr
    done = zraft("backup", "--http", address, str(tmp_path / "x"))  # no database yet: 503
    assert done.returncode == 1 and done.stderr.startswith("zraft backup: server responded with 503")
    assert os.listdir(tmp_path) == []


def test_shell_backup_and_dump_to_file(env: Env, tmp_path: Path) -> None:
    make_db(env, "CREATE TABLE foo(a)", "CREATE TABLE bar(b)", "INSERT INTO foo VALUES('fiona')")
    copy, dump = tmp_path / "copy.sqlite", tmp_path / "dump.sql"
    done = zraft("shell", "--host", f"127.0.0.1:{env.node.port}",
                 stdin=f".backup {copy}\n.dump {dump} foo\n.backup\n")
    assert done.stdout.splitlines() == ["backup file written successfully",
                                        f"SQL text file written successfully to {dump}", "ERR! usage: .backup FILE"]
    assert sqlite3.connect(copy).execute("SELECT a FROM foo").fetchall() == [("fiona",)]
    assert dump.read_text().splitlines()[2:4] == ["CREATE TABLE foo(a);", "INSERT INTO \"foo\" VALUES('fiona');"]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_download_cut_short_fails_and_leaves_no_file(tmp_path: Path, framing: str) -> None:
    """A node that fails mid-stream aborts the connection; the download must not pass the
    truncated body off as a backup."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        head = "Content-Length: 100000" if framing == "length" else "Transfer-Encoding: chunked"
        body = b"x" * 1000 if framing == "length" else b"3e8\r\n" + b"x" * 1000 + b"\r\n"
        conn.sendall(f"HTTP/1.1 200 OK\r\n{head}\r\n\r\n".encode() + body)
        conn.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(DownloadError, match="cut short"):
            download(f"http://127.0.0.1:{server.getsockname()[1]}", BackupRequest(), tmp_path / "b.sqlite", 5)
        assert os.listdir(tmp_path) == []
    finally:
        thread.join(5)
        server.close()
