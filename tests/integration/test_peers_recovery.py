"""Recovery from a lost quorum with peers.json (issue 12): two of three nodes are destroyed;
the survivor, given a peers.json naming itself alone, comes back as a 1-node cluster with all
its data and takes writes; the file is consumed once."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, http, query, wait_for

pytestmark = pytest.mark.timeout(180)



def programs(node: int) -> list[str]:
    return [f"node{node}-api", f"node{node}-store", f"node{node}-raft"]


def test_a_survivor_of_a_lost_quorum_comes_back_alone_with_every_row(cluster: LocalCluster) -> None:
    leader = wait_for(cluster.leader_id, 30, "a leader")
    assert execute(cluster.port(leader), ["CREATE TABLE t(x)"])[0] == 200
    for value in range(20):
        assert execute(cluster.port(leader), [["INSERT INTO t VALUES(?)", value]])[0] == 200
    survivor = next(n for n in (1, 2, 3) if n != leader)
    wait_for(lambda: query(cluster.port(survivor), "SELECT count(*) FROM t", level="none")[1]
             ["results"][0]["values"] == [[20]], 10, "the survivor to hold every row")
    for node in (1, 2, 3):
        assert cluster.supervisorctl("stop", *programs(node)).returncode == 0
    for node in (1, 2, 3):
        if node != survivor:
            shutil.rmtree(cluster.directory / f"node{node}" / "raft")  # destroyed for good
            (cluster.directory / f"node{node}" / "db.sqlite").unlink()

    raft_dir = cluster.directory / f"node{survivor}" / "raft"
    (raft_dir / "peers.json").write_text(json.dumps([{"id": str(survivor), "address": "unused"}]))
    assert cluster.supervisorctl("start", *reversed(programs(survivor))).returncode == 0
    port = cluster.port(survivor)
    wait_for(lambda: http("GET", f"http://127.0.0.1:{port}/leader", timeout=2)[1].get("id") == str(survivor),
             30, "the survivor to lead alone")
    assert not (raft_dir / "peers.json").exists() and (raft_dir / "peers.info").exists()
    status, doc = execute(port, [["INSERT INTO t VALUES(?)", 20]])
    assert status == 200 and doc["results"][0].get("rows_affected") == 1, doc
    status, doc = query(port, "SELECT count(*) FROM t", level="strong")
    assert status == 200 and doc["results"][0]["values"] == [[21]], doc
    assert sorted(http("GET", f"http://127.0.0.1:{port}/nodes")[1]) == [str(survivor)]
