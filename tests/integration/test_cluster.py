"""A real 3-node cluster on loopback: the acceptance checks of the node issue.

Every check reads back what was acknowledged, from every node, and compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time

import pytest

from tests.integration.conftest import LocalCluster, start_cluster, stop_cluster
from tests.integration.helpers import execute, http, query, wait_for
from zraft.cluster import _alive

pytestmark = pytest.mark.integration


def create_table(cluster: LocalCluster) -> None:
    status, body = execute(cluster.port(1), ["CREATE TABLE t (id INTEGER PRIMARY KEY, node INTEGER, n INTEGER)"])
    assert status == 200 and "error" not in body["results"][0], body


def insert(cluster: LocalCluster, node_id: int, n: int, timeout: float = 10) -> bool:
    """One INSERT through `node_id`; True only if acknowledged without error."""
    try:
        status, body = http("POST", f"http://127.0.0.1:{cluster.port(node_id)}/db/execute",
                            [["INSERT INTO t(node, n) VALUES(?, ?)", node_id, n]], timeout=timeout)
    except OSError:
        return False
    return status == 200 and "error" not in body and body["results"][0].get("rows_affected") == 1


def rows_on(cluster: LocalCluster, node_id: int) -> list[list[int]]:
    status, body = query(cluster.port(node_id), "SELECT node, n FROM t ORDER BY node, n", level="none")
    assert status == 200, body
    return body["results"][0].get("values", [])


def data_hash(cluster: LocalCluster, node_id: int) -> str:
    status, body = query(cluster.port(node_id), "SELECT * FROM t ORDER BY id", level="none")
    assert status == 200, body
    return hashlib.sha256(json.dumps(body["results"][0].get("values", [])).encode()).hexdigest()


def wait_converged(cluster: LocalCluster, expected: set[tuple[int, int]], timeout: float = 20) -> None:
    """Every acknowledged row is present on every node, and all nodes hold identical data."""
    def check() -> bool:
        for node_id in range(1, cluster.nodes + 1):
            present = {tuple(r) for r in rows_on(cluster, node_id)}
            if not expected <= present:
                return False
        return len({data_hash(cluster, i) for i in range(1, cluster.nodes + 1)}) == 1
    wait_for(check, timeout, "all nodes to hold every acknowledged row")


def test_nodes_shows_three_voters_and_a_leader(cluster: LocalCluster) -> None:
    def leader_known() -> dict | None:
        status, body = http("GET", f"http://127.0.0.1:{cluster.port(1)}/nodes")
        nodes = body.get("nodes", body) if isinstance(body, dict) else {}
        entries = nodes if isinstance(nodes, list) else list(nodes.values())
        voters = [n for n in entries if n.get("voter")]
        leaders = [n for n in entries if n.get("leader")]
        return body if status == 200 and len(voters) == 3 and len(leaders) == 1 else None
    wait_for(leader_known, 15, "/nodes to show 3 voters and a leader")


def test_300_inserts_spread_over_all_nodes_are_acknowledged_and_everywhere(cluster: LocalCluster) -> None:
    create_table(cluster)
    acked = set()
    for n in range(300):
        node_id = n % 3 + 1
        assert insert(cluster, node_id, n), f"insert {n} through node {node_id} failed"
        acked.add((node_id, n))
    wait_converged(cluster, acked)


def test_reads_at_each_level(cluster: LocalCluster) -> None:
    create_table(cluster)
    assert insert(cluster, 1, 1)
    for node_id in (1, 2, 3):
        for level in ("weak", "linearizable", "strong"):
            status, body = query(cluster.port(node_id), "SELECT count(*) FROM t", level=level)
            assert status == 200 and body["results"][0]["values"] == [[1]], (node_id, level, body)
    wait_for(lambda: all(rows_on(cluster, i) == [[1, 1]] for i in (1, 2, 3)), 10, "level=none to catch up")


class Writer(threading.Thread):
    """Writes rows in a loop through every node, recording which were acknowledged."""

    def __init__(self, cluster: LocalCluster, writer_id: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.writer_id = cluster, writer_id
        self.acked: set[tuple[int, int]] = set()
        self.stop = threading.Event()
        self.n = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.n += 1
            node_id = self.n % 3 + 1
            if insert(self.cluster, node_id, self.writer_id * 1_000_000 + self.n, timeout=5):
                self.acked.add((node_id, self.writer_id * 1_000_000 + self.n))

    def finish(self) -> set[tuple[int, int]]:
        self.stop.set()
        self.join(30)
        return self.acked


def test_kill_9_leader_raft_process(cluster: LocalCluster) -> None:
    create_table(cluster)
    writer = Writer(cluster, 1)
    writer.start()
    wait_for(lambda: len(writer.acked) >= 20, 20, "writes before the kill")
    old_leader = wait_for(cluster.leader_id, 10, "a leader")
    killed_pid = cluster.kill(old_leader, "raft")
    before = len(writer.acked)
    killed_at = time.monotonic()
    wait_for(lambda: len(writer.acked) > before + 5, 10, "writes to succeed again after the kill")
    recovered_s = time.monotonic() - killed_at
    new_pid = wait_for(lambda: (p := cluster.pid(old_leader, "raft")) and p != killed_pid and p, 20,
                       "supervisord to restart the killed raft process")
    assert new_pid != killed_pid
    acked = writer.finish()
    wait_converged(cluster, acked, timeout=30)
    assert recovered_s < 10


def test_kill_9_store_process_under_load(cluster: LocalCluster) -> None:
    create_table(cluster)
    writer = Writer(cluster, 2)
    writer.start()
    wait_for(lambda: len(writer.acked) >= 20, 20, "writes before the kill")
    follower = next(s.id for s in cluster.status() if not s.leader)
    killed_pid = cluster.kill(follower, "store")
    wait_for(lambda: (p := cluster.pid(follower, "store")) and p != killed_pid, 20, "store restart")
    before = len(writer.acked)
    wait_for(lambda: len(writer.acked) > before + 20, 20, "writes after the store restart")
    acked = writer.finish()
    wait_converged(cluster, acked, timeout=30)


def test_whole_cluster_kill_9_and_restart(cluster: LocalCluster) -> None:
    create_table(cluster)
    acked = {(1, n) for n in range(50) if insert(cluster, 1, n)}
    assert len(acked) == 50
    for node_id in (1, 2, 3):
        for proc in ("raft", "store", "api"):
            cluster.kill(node_id, proc)
    wait_for(cluster.leader_id, 30, "a leader after the whole-cluster kill")
    wait_for(lambda: insert(cluster, 2, 1000), 20, "writes after the whole-cluster restart")
    wait_converged(cluster, acked | {(2, 1000)}, timeout=30)


def test_cluster_down_leaves_no_process(tmp_path) -> None:
    started = start_cluster(tmp_path)
    pids = started.all_pids()
    assert len(pids) == 10  # 9 programs + supervisord
    result = started.zraft("down")
    assert result.returncode == 0, result.stderr
    assert not [pid for pid in pids if _alive(pid)]
    stop_cluster(started)
