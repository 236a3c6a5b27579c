"""Power loss on every node at once: a 3-node cluster whose data lives on lazyfs mounts.

Each node's data_dir (Raft log, SQLite database, its ipc sockets) is its own lazyfs mount
(zraft/chaos/lazyfs.py), which keeps every write in memory until it is fsynced. A "power
loss" SIGKILLs supervisord and all nine zraft processes, waits until they are gone, then
cuts the power of every mount: whatever was not fsynced is lost. The cluster restarts on
the same folders and every row acknowledged with a 200 before the cut must be on every node.
Node 1's cuts drop all unsynced data, node 2's keep a torn prefix of it, node 3's keep a
random half of its pages (out-of-order write-back).

The node configs, supervisord's files and the process logs are written outside the mounts
(cluster/node<i>/): `zraft cluster up` would write zraft.toml into the data folder without an
fsync, and a cut would then lose it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, free_port_base, http, query, wait_for
from zraft.chaos.lazyfs import Mode, Mount, unavailable_reason
from zraft.cluster import _alive, _ready, down, node_peers, status, supervisord_conf
from zraft.config import NodeConfig, RaftSettings, render

REASON = unavailable_reason()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(REASON is not None, reason=f"lazyfs cannot run here: {REASON}")]

NODES = 3
MODES: tuple[Mode, ...] = ("drop", "torn", "reorder")  # what each node's cut keeps (see lazyfs.py)
ROWS_PER_ROUND = 60
CUTS = 3


class PowerCluster(LocalCluster):
    """LocalCluster's helpers, with data_dir = a lazyfs mount per node."""

    mounts: list[Mount]

    def start(self) -> None:
        conf = self.directory / "supervisord.conf"
        subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                       check=True, cwd=self.directory)
        wait_for(lambda: any(s.leader for s in self.status()) and all(_ready(s.http) for s in self.status()),
                 30, "a leader known to every node")

    def power_loss(self) -> None:
        """SIGKILL supervisord first (so that it restarts nothing), then every program; once
        all are gone, cut every mount's power."""
        pids = self.all_pids()
        assert len(pids) == 3 * self.nodes + 1, pids
        for pid in reversed(pids):  # all_pids() lists supervisord last
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(_alive(pid) for pid in pids), 10, "every killed process to be gone")
        for mount in self.mounts:
            mount.cut()


def write_node_configs(directory: Path, mounts: list[Mount], http_port: int) -> list[Path]:
    """Like zraft.cluster.write_configs, except that data_dir is the node's mount."""
    peers = node_peers(NODES, http_port)
    paths = []
    for peer, mount in zip(peers, mounts):
        node_dir = directory / f"node{peer.id}"
        node_dir.mkdir(parents=True, exist_ok=True)
        data = mount.mountpoint.resolve()
        # ipc sockets stay in data_dir (the default layout): lazyfs passes mknod through.
        config = NodeConfig(id=peer.id, data_dir=data, peers=peers,
                            raft=RaftSettings(segment_bytes=1 << 20),  # lazyfs emulates fallocate slowly
                            raft_rpc=f"ipc://{data}/raft.sock", raft_pub=f"ipc://{data}/raft-pub.sock",
                            store_rpc=f"ipc://{data}/store.sock", store_pub=f"ipc://{data}/store-pub.sock")
        path = node_dir / "zraft.toml"
        path.write_text(render(config))
        paths.append(path)
    return paths


@pytest.fixture
def power_cluster(tmp_path: Path) -> Iterator[PowerCluster]:
    directory = tmp_path / "cluster"
    directory.mkdir()
    cluster = PowerCluster(directory, free_port_base(), NODES)
    cluster.mounts = []
    try:
        for i in range(1, NODES + 1):
            cluster.mounts.append(Mount(tmp_path / f"disk{i}", tmp_path / f"data{i}",
                                        mode=MODES[i - 1], seed=i,
                                        log=directory / f"lazyfs{i}.log"))
        paths = write_node_configs(directory, cluster.mounts, cluster.http_port)
        (directory / "supervisord.conf").write_text(supervisord_conf(directory, paths))
        cluster.start()
        yield cluster
    finally:
        _teardown(cluster)


def _teardown(cluster: PowerCluster) -> None:
    """Stop every process and unmount every mount, whatever state the test left."""
    pids = cluster.all_pids() if (cluster.directory / "supervisord.conf").exists() else []
    try:
        down(cluster.directory, timeout_s=10)
    except Exception:  # noqa: BLE001 - the kills below are the real guarantee
        pass
    for pid in pids + _processes_using(cluster.directory):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for mount in cluster.mounts:
        mount.unmount()


def _processes_using(directory: Path) -> list[int]:
    """PIDs of the zraft programs started for this cluster (their command line names its
    config), in case supervisord was already gone and could not report them."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(directory).encode() in cmdline and int(entry) != os.getpid():
                found.append(int(entry))
    return found


class Writer:
    """Inserts rows through one node until stopped, recording those acknowledged with a 200."""

    def __init__(self, cluster: PowerCluster, round_: int, node_id: int) -> None:
        self.cluster, self.round, self.node_id = cluster, round_, node_id
        self.acked: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 10_000 * self.round + 1_000 * self.node_id
        while not self._stop.is_set():
            n += 1
            try:
                code, body = execute(self.cluster.port(self.node_id), [["INSERT INTO t(round, n) VALUES(?, ?)", self.round, n]])
            except OSError:
                continue
            if code == 200 and "error" not in body["results"][0]:
                self.acked.add(n)

    def stop(self) -> set[int]:
        self._stop.set()
        self._thread.join(timeout=15)
        return self.acked


def rows_on(cluster: PowerCluster, node_id: int) -> set[int]:
    code, body = query(cluster.port(node_id), "SELECT n FROM t", level="none")
    assert code == 200, body
    return {row[0] for row in body["results"][0].get("values", [])}


def test_acknowledged_rows_survive_repeated_power_loss_of_every_node(power_cluster: PowerCluster) -> None:
    cluster = power_cluster
    code, body = execute(cluster.port(1), ["CREATE TABLE t (id INTEGER PRIMARY KEY, round INTEGER, n INTEGER)"])
    assert code == 200 and "error" not in body["results"][0], body
    acked: set[int] = set()
    for round_ in range(1, CUTS + 1):
        for i in range(ROWS_PER_ROUND):  # each one must be acknowledged
            n = 10_000 * round_ - ROWS_PER_ROUND + i
            code, body = execute(cluster.port(1 + i % NODES), [["INSERT INTO t(round, n) VALUES(?, ?)", round_, n]])
            assert code == 200 and "error" not in body["results"][0], body
            acked.add(n)
        writers = [Writer(cluster, round_, node_id) for node_id in (1, 2)]  # writes in flight at the cut
        wait_for(lambda: all(len(w.acked) >= 10 for w in writers), 20, "background writes")
        cluster.power_loss()
        for w in writers:
            acked |= w.stop()
        cluster.start()
        missing: dict[int, set[int]] = {}

        def converged() -> bool:
            missing.clear()
            for node_id in range(1, NODES + 1):
                lost = acked - rows_on(cluster, node_id)
                if lost:
                    missing[node_id] = lost
            return not missing
        try:
            wait_for(converged, 20, "every acknowledged row on every node")
        except AssertionError:
            pytest.fail(f"after power cut {round_}, acknowledged rows missing: "
                        f"{ {k: sorted(v)[:20] for k, v in missing.items()} }")
        code, body = http("GET", f"http://127.0.0.1:{cluster.port(1)}/status")
        assert code == 200
    # the last restart still takes writes
    code, body = execute(cluster.port(2), [["INSERT INTO t(round, n) VALUES(?, ?)", 99, 1]])
    assert code == 200 and "error" not in body["results"][0], body
    statuses = status(cluster.directory)
    assert sum(s.leader for s in statuses) == 1
    for mount in cluster.mounts:
        assert "cuts=3" in mount.status()
