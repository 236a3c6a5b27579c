"""Compaction and catch-up through snapshot images on a real cluster (issue 11).

With a small `snapshot_threshold`, every node's log is compacted below what its store has
fsynced, so the log's size follows the threshold, not the history; a follower stopped while
the leader compacted past it comes back through an image pulled from the leader, with every
row, without a flood of messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import LocalCluster, start_cluster, stop_cluster
from tests.integration.helpers import execute, http, query, wait_for

pytestmark = pytest.mark.integration

THRESHOLD, TRAILING = 200, 100
SETTINGS = (f"snapshot_threshold={THRESHOLD}", f"trailing_logs={TRAILING}", "snapshot_interval_ms=500")


@pytest.fixture
def small(tmp_path: Path) -> Iterator[LocalCluster]:
    started = start_cluster(tmp_path, overrides=SETTINGS)
    try:
        yield started
    finally:
        stop_cluster(started)


def raft_status(cluster: LocalCluster, node: int) -> dict[str, Any]:
    status, doc = http("GET", f"http://127.0.0.1:{cluster.port(node)}/status")
    assert status == 200, doc
    return dict(doc["store"]["raft"])


def write_rows(port: int, first: int, count: int, batch: int = 1) -> None:
    """`count` writes of `batch` rows each, one request per write (one log entry each)."""
    for start in range(first, first + count * batch, batch):
        rows = [["INSERT INTO t(id, v) VALUES(?, ?)", i, f"row {i}"] for i in range(start, start + batch)]
        status, body = execute(port, rows)
        assert status == 200 and all("error" not in r for r in body["results"]), body


def rows(cluster: LocalCluster, node: int) -> list[Any]:
    status, body = query(cluster.port(node), "SELECT id, v FROM t ORDER BY id", level="none")
    assert status == 200, body
    return list(body["results"][0].get("values", []))


def test_logs_are_compacted_and_a_stopped_follower_catches_up_through_an_image(small: LocalCluster) -> None:
    leader = wait_for(small.leader_id, 30, "a leader")
    port = small.port(leader)
    status, body = execute(port, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
    assert status == 200 and "error" not in body["results"][0], body
    write_rows(port, 0, 3 * THRESHOLD)

    for node in (1, 2, 3):  # every node compacts, and keeps about threshold + trailing entries
        raft = wait_for(lambda n=node: (s := raft_status(small, n))["last_snapshot_index"] > 0 and s, 20,
                        f"node {node} to compact")
        assert raft["log_entries"] <= 2 * (THRESHOLD + TRAILING), raft

    follower = next(n for n in (1, 2, 3) if n != leader)
    stopped = small.supervisorctl("stop", f"node{follower}-raft", f"node{follower}-store", f"node{follower}-api")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    before = raft_status(small, leader)["last_snapshot_index"]
    write_rows(port, 10_000, 2 * THRESHOLD + TRAILING, batch=5)
    wait_for(lambda: raft_status(small, leader)["last_snapshot_index"] > before + TRAILING, 20,
             "the leader to compact past what the stopped follower has")

    started = small.supervisorctl("start", f"node{follower}-raft", f"node{follower}-store", f"node{follower}-api")
    assert started.returncode == 0, started.stdout + started.stderr
    expected = rows(small, leader)
    assert len(expected) == 3 * THRESHOLD + 5 * (2 * THRESHOLD + TRAILING)
    wait_for(lambda: rows(small, follower) == expected, 60, "the restarted follower to hold every row")
    store = http("GET", f"http://127.0.0.1:{small.port(follower)}/status")[1]["store"]["fsm"]
    assert store.get("images_installed", 0) >= 1, store  # it came back through an image, not the log
    sent = raft_status(small, leader)["stats"].get("peer_sent", 0)
    print(f"\nfollower {follower} caught up through an image; leader sent {sent} peer messages in all")
    write_rows(port, 100_000, 10)  # and it follows the log again afterwards
    expected = rows(small, leader)
    wait_for(lambda: rows(small, follower) == expected, 30, "the follower to apply new writes")


@pytest.mark.parametrize("lost", ["everything", "the database only"])
def test_a_follower_whose_data_folder_was_wiped_comes_back_with_every_row(small: LocalCluster, lost: str) -> None:
    leader = wait_for(small.leader_id, 30, "a leader")
    port = small.port(leader)
    status, body = execute(port, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
    assert status == 200 and "error" not in body["results"][0], body
    write_rows(port, 0, 2 * THRESHOLD + TRAILING, batch=3)
    wait_for(lambda: raft_status(small, leader)["last_snapshot_index"] > 0, 20, "the leader to compact")

    follower = next(n for n in (1, 2, 3) if n != leader)
    programs = [f"node{follower}-{proc}" for proc in ("raft", "store", "api")]
    assert small.supervisorctl("stop", *programs).returncode == 0
    node_dir = small.directory / f"node{follower}"
    for item in [node_dir / "db.sqlite", node_dir / "db.sqlite-wal", node_dir / "db.sqlite-shm"]:
        item.unlink(missing_ok=True)
    if lost == "everything":
        for segment in (node_dir / "raft").glob("*"):
            segment.unlink()
    assert small.supervisorctl("start", *programs).returncode == 0

    expected = rows(small, leader)
    wait_for(lambda: rows(small, follower) == expected, 60, "the wiped follower to hold every row")
    store = http("GET", f"http://127.0.0.1:{small.port(follower)}/status")[1]["store"]["fsm"]
    assert store.get("images_installed", 0) == 1, store  # through an image: its log was compacted past it
    if lost == "everything":  # it voted for nobody until every voter had told it its term and log
        log = node_dir / "raft.log"
        since_wipe = wait_for(lambda: (text := log.read_text().split("blank start")[-1]) and
                              "every voter answered: term " in text and text, 20, "the wiped node to recover")
        answered = int(since_wipe.split("every voter answered: term ")[1].split(",")[0])
        assert answered >= raft_status(small, leader)["term"] >= 1
    write_rows(port, 50_000, 5)
    expected = rows(small, leader)
    wait_for(lambda: rows(small, follower) == expected, 30, "the wiped follower to apply new writes")


def test_post_snapshot_compacts_now_and_says_204_when_there_is_nothing_to_drop(small: LocalCluster) -> None:
    leader = wait_for(small.leader_id, 30, "a leader")
    port = small.port(leader)
    status, body = execute(port, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
    assert status == 200 and "error" not in body["results"][0], body
    write_rows(port, 0, 50)  # under the trailing margin: nothing is compacted by itself
    follower = next(n for n in (1, 2, 3) if n != leader)
    wait_for(lambda: len(rows(small, follower)) == 50, 10, "the follower to apply")
    assert raft_status(small, follower)["last_snapshot_index"] == 0
    url = f"http://127.0.0.1:{small.port(follower)}/snapshot"
    assert http("POST", url + "?trailing_logs=oops")[0] == 400
    assert http("POST", url + "?trailing_logs=0")[0] == 200
    raft = raft_status(small, follower)
    assert raft["last_snapshot_index"] == raft["last_log_index"] and raft["log_entries"] == 0, raft
    assert http("POST", url + "?trailing_logs=0")[0] == 204  # nothing new
    assert len(rows(small, follower)) == 50
