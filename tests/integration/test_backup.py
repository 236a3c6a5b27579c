"""Backups of a real 3-node cluster's database, written through the log: `zraft backup`
streams it into a file that SQLite checks whole, every format and option agrees with it, and
the api process's memory stays bounded while it streams.

By default a few megabytes; with ZRAFT_SLOW=1 about 1 GB (1,000 rows of 1 MB), which must be
backed up with the api process's peak RSS under 200 MB. The slow run prints the time taken,
beside a plain `cp` of the same database file."""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, http, query, wait_for

pytestmark = pytest.mark.integration

RSS_LIMIT_BYTES = 200 << 20
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RssSampler:
    """Samples a process's resident set from /proc while running; `peak` is the larger of
    what was seen and the kernel's own high-water mark (VmHWM)."""

    pid: int
    interval: float = 0.05
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(status_kib(self.pid, "VmRSS") * 1024)

    @property
    def peak(self) -> int:
        return max([*self.samples, status_kib(self.pid, "VmHWM") * 1024])


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def fill(port: int, rows: int, blob_bytes: int, batch: int) -> None:
    """`rows` rows of `blob_bytes` random bytes each, `batch` rows per log entry. randomblob()
    runs on apply (norwrandom): each node draws the same bytes from the entry's seed, so the
    log carries a short statement, not the data."""
    assert execute(port, ["CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB NOT NULL)"])[0] == 200
    for start in range(0, rows, batch):
        count = min(batch, rows - start)
        sql = (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
               f"INSERT INTO blobs(b) SELECT randomblob({blob_bytes}) FROM n")
        status, doc = execute(port, [sql], norwrandom="", timeout="5m")
        assert status == 200 and doc["results"][0].get("rows_affected") == count, doc


def zraft_backup(port: int, dest: Path, *options: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "zraft", "backup", "--http", f"127.0.0.1:{port}", str(dest),
                           "--no-progress", *options], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr
    return done


def check_file(path: Path, rows: int, blob_bytes: int) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*), min(length(b)), max(length(b)) FROM blobs").fetchone() == \
            (rows, blob_bytes, blob_bytes)
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("blobs",)]
    finally:
        conn.close()


def back_up_and_measure(cluster: LocalCluster, tmp_path: Path, rows: int, blob_bytes: int,
                        batch: int) -> tuple[int, float, Path]:
    """Fill the database, back it up from the leader with `zraft backup`; (peak RSS of the
    leader's api process, seconds, the backup file)."""
    lead = wait_for(cluster.leader_id, 20, "a leader")
    port = cluster.port(lead)
    fill(port, rows, blob_bytes, batch)
    api_pid = cluster.pid(lead, "api")
    assert api_pid
    dest = tmp_path / "backup.sqlite"
    start = time.monotonic()
    with RssSampler(api_pid) as rss:
        zraft_backup(port, dest)
    seconds = time.monotonic() - start
    check_file(dest, rows, blob_bytes)
    scratch = cluster.directory / f"node{lead}" / "tmp"
    wait_for(lambda: not list(scratch.glob("backup-*")), 10, "scratch files removed")
    return rss.peak, seconds, dest


def test_backup_of_a_few_megabytes_in_every_format(cluster: LocalCluster, tmp_path: Path) -> None:
    peak, _, dest = back_up_and_measure(cluster, tmp_path, rows=40, blob_bytes=128 << 10, batch=10)
    assert peak < RSS_LIMIT_BYTES, f"api peak RSS {peak / 2**20:.0f} MiB"
    port = cluster.port(wait_for(cluster.leader_id, 20, "a leader"))
    base = f"http://127.0.0.1:{port}/db/backup"
    packed = tmp_path / "packed.gz"
    zraft_backup(port, packed, "--compress", "--fmt", "delete")
    unpacked = tmp_path / "unpacked.sqlite"
    unpacked.write_bytes(gzip.decompress(packed.read_bytes()))
    check_file(unpacked, 40, 128 << 10)
    vacuumed = tmp_path / "vacuumed.sqlite"
    zraft_backup(port, vacuumed, "--vacuum")
    check_file(vacuumed, 40, 128 << 10)
    assert vacuumed.stat().st_size <= dest.stat().st_size
    status, text = http("GET", f"{base}?fmt=sql&tables=blobs,nosuch")
    assert status == 200 and text.count("INSERT INTO \"blobs\"") == 40
    follower = next(i for i in (1, 2, 3) if cluster.port(i) != port)
    wait_for(lambda: query(cluster.port(follower), "SELECT count(*) FROM blobs", level="none")[1]
             ["results"][0].get("values") == [[40]], 20, "the follower to apply every row")
    copy = tmp_path / "follower.sqlite"
    zraft_backup(cluster.port(follower), copy, "--noleader")
    check_file(copy, 40, 128 << 10)


@pytest.mark.skipif(os.environ.get("ZRAFT_SLOW") != "1", reason="about 1 GB of data: set ZRAFT_SLOW=1")
@pytest.mark.timeout(3600)
def test_backup_of_1_gb_keeps_the_api_under_200_mb(cluster: LocalCluster, tmp_path: Path) -> None:
    peak, seconds, dest = back_up_and_measure(cluster, tmp_path, rows=1000, blob_bytes=1_000_000, batch=20)
    size = dest.stat().st_size
    lead = wait_for(cluster.leader_id, 20, "a leader")
    source = cluster.directory / f"node{lead}" / "db.sqlite"
    start = time.monotonic()
    subprocess.run(["cp", str(source), str(tmp_path / "cp.sqlite")], check=True)
    cp_seconds = time.monotonic() - start
    print(f"\n1 GB backup: {size:,} bytes in {seconds:.1f} s, api peak RSS {peak / 2**20:.1f} MiB; "
          f"cp of the database file ({source.stat().st_size:,} bytes): {cp_seconds:.1f} s")
    assert size > 1_000_000_000
    assert peak < RSS_LIMIT_BYTES, f"api peak RSS {peak / 2**20:.0f} MiB"
