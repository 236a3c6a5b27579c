"""A real 3-node cluster (3 x raft, store, api processes under supervisord) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import free_port_base
from zraft.cluster import _alive, status


@dataclass
class LocalCluster:
    directory: Path
    http_port: int
    nodes: int = 3

    def port(self, node_id: int) -> int:
        return self.http_port + 2 * (node_id - 1)

    def ports(self) -> list[int]:
        return [self.port(i) for i in range(1, self.nodes + 1)]

    def zraft(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "zraft", "cluster", *args, "--dir", str(self.directory)],
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> list:
        return status(self.directory)

    def leader_id(self) -> int | None:
        leaders = [s.id for s in self.status() if s.leader]
        return leaders[0] if len(leaders) == 1 else None

    def pid(self, node_id: int, proc: str) -> int | None:
        return self.status()[node_id - 1].pids[proc]

    def all_pids(self) -> list[int]:
        pids = [pid for s in self.status() for pid in s.pids.values() if pid]
        supervisor = self.directory / "supervisord.pid"
        if supervisor.exists():
            pids.append(int(supervisor.read_text()))
        return pids

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        conf = self.directory / "supervisord.conf"
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                              capture_output=True, text=True, timeout=60)

    def kill(self, node_id: int, proc: str) -> int:
        pid = self.pid(node_id, proc)
        assert pid, f"node {node_id} {proc} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid


def start_cluster(tmp_path: Path, nodes: int = 3, overrides: tuple[str, ...] = ()) -> LocalCluster:
    """`overrides` are `zraft cluster up --set` assignments."""
    cluster = LocalCluster(tmp_path / "cluster", free_port_base(), nodes)
    sets = [arg for assignment in overrides for arg in ("--set", assignment)]
    result = cluster.zraft("up", "--nodes", str(nodes), "--http-port", str(cluster.http_port), *sets)
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in cluster.directory.glob("node*/*.log"))
        cluster.zraft("down")
        raise AssertionError(f"cluster up failed: {result.stderr}\n{logs}")
    return cluster


def stop_cluster(cluster: LocalCluster) -> None:
    pids = cluster.all_pids()
    cluster.zraft("down")
    for pid in pids:  # belt and braces: never leave a process behind, even on failure
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    started = start_cluster(tmp_path)
    try:
        yield started
    finally:
        stop_cluster(started)
