"""zraft-rqlited started as test rigs start rqlited (pyrqlite's spawn mode: `-http-addr`,
`-raft-addr`, a data folder): it serves rqlite's API until SIGTERM, then stops every process
it started and exits 0; started again on the same folder it has the data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import execute, free_port_base, http, query, wait_for
from zraft.cluster import _alive

pytestmark = pytest.mark.timeout(120)


def spawn(data: Path, http_port: int, raft_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "zraft.rqlited", "-http-addr", f"localhost:{http_port}",
                             "-raft-addr", f"localhost:{raft_port}", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def stop(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGTERM as pyrqlite does; every process it ran, to check none is left."""
    started = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    return started


def test_spawned_like_rqlited_it_serves_and_stops_cleanly(tmp_path: Path) -> None:
    base = free_port_base(4)
    data = tmp_path / "data"
    proc = spawn(data, base, base + 1)
    ran: list[int] = []
    try:
        wait_for(lambda: http("GET", f"http://127.0.0.1:{base}/readyz", timeout=2)[0] == 200, 30, "readyz")
        assert execute(base, ["CREATE TABLE t(x)", "INSERT INTO t VALUES(1)"])[0] == 200
        ran += stop(proc)
        assert len(ran) == 3, ran  # raft, store and api
        proc = spawn(data, base, base + 1)
        wait_for(lambda: http("GET", f"http://127.0.0.1:{base}/readyz", timeout=2)[0] == 200, 30, "readyz again")
        status, doc = query(base, "SELECT x FROM t", level="strong")
        assert status == 200 and doc["results"][0]["values"] == [[1]], doc
        ran += stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in ran + children(proc.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not [pid for pid in ran if _alive(pid)]


def test_an_unsupported_flag_is_named_and_nothing_starts(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "zraft.rqlited", "-auth", "users.json", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "-auth is not supported" in result.stderr
    assert not (tmp_path / "d").exists()
