"""Membership through rqlite's HTTP API on a real 3-node cluster (issue 12): /nodes tells the
Raft configuration, POST /leader moves leadership (to a chosen node, or to the best one),
DELETE /remove takes a node out (and the removed node, still running, learns it and stops
campaigning), and bad requests change nothing. Each request goes through
a follower, so forwarding to the leader is exercised too."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, http, query, wait_for

pytestmark = pytest.mark.timeout(180)
ELECTION_TIMEOUT_S = 0.5  # raft.tick_ms 50 x raft.election_ticks 10, the defaults



def nodes(cluster: LocalCluster, node: int, extra: str = "") -> dict[str, dict]:
    status, doc = http("GET", f"http://127.0.0.1:{cluster.port(node)}/nodes?{extra}")
    assert status == 200, doc
    return doc


def test_leader_moves_to_the_chosen_node_and_to_the_best_one(cluster: LocalCluster) -> None:
    leader = wait_for(cluster.leader_id, 30, "a leader")
    follower, target = [n for n in (1, 2, 3) if n != leader]
    assert execute(cluster.port(follower), ["CREATE TABLE t(x)"])[0] == 200
    started = time.monotonic()
    status, text = http("POST", f"http://127.0.0.1:{cluster.port(follower)}/leader?wait", {"id": str(target)})
    took = time.monotonic() - started
    assert status == 200, text
    assert wait_for(cluster.leader_id, 5, "the new leader") == target
    print(f"POST /leader?wait to node {target} through node {follower}: {took * 1000:.0f} ms")
    assert took < ELECTION_TIMEOUT_S, took
    assert http("GET", f"http://127.0.0.1:{cluster.port(follower)}/leader")[1]["id"] == str(target)

    status, text = http("POST", f"http://127.0.0.1:{cluster.port(target)}/leader?wait", raw=b"")
    assert status == 200, text
    assert wait_for(cluster.leader_id, 5, "another leader") != target
    status, doc = execute(cluster.port(target), [["INSERT INTO t VALUES(1)"]])  # through the old leader
    assert status == 200 and doc["results"][0].get("rows_affected") == 1, doc

    result = cluster.zraft("transfer", "--node", str(leader))  # the local cluster's command
    assert result.returncode == 0 and f"to node {leader}" in result.stdout, result.stderr
    assert wait_for(cluster.leader_id, 5, "the first leader again") == leader


def test_bad_leader_and_remove_requests_are_400_and_change_nothing(cluster: LocalCluster) -> None:
    leader = wait_for(cluster.leader_id, 30, "a leader")
    follower = next(n for n in (1, 2, 3) if n != leader)
    url = f"http://127.0.0.1:{cluster.port(follower)}"
    for body in ({"id": "x"}, {"id": "2", "extra": 1}, [2], {"id": -1}, {"id": True}):
        assert http("DELETE", f"{url}/remove", body)[0] == 400, body
    assert http("DELETE", f"{url}/remove", raw=b"{not json")[0] == 400
    assert http("POST", f"{url}/leader", {"id": "9"})[0] == 400  # not a voter
    assert http("GET", f"{url}/remove")[0] == 405
    assert http("DELETE", f"{url}/remove", {"id": "9"})[0] == 200  # not a member: nothing to do, as rqlite
    assert sorted(nodes(cluster, follower)) == ["1", "2", "3"]
    assert wait_for(cluster.leader_id, 5, "the same leader") == leader


def test_remove_a_follower_and_the_cluster_goes_on_with_two(cluster: LocalCluster) -> None:
    leader = wait_for(cluster.leader_id, 30, "a leader")
    gone, other = [n for n in (1, 2, 3) if n != leader]
    assert execute(cluster.port(other), ["CREATE TABLE t(x)"])[0] == 200
    listed = nodes(cluster, other)
    assert sorted(listed) == ["1", "2", "3"] and all(n["voter"] for n in listed.values()), listed
    status, text = http("DELETE", f"http://127.0.0.1:{cluster.port(other)}/remove", {"id": str(gone)})
    assert status == 200, text
    assert sorted(nodes(cluster, other)) == sorted(str(n) for n in (leader, other))
    assert sorted(nodes(cluster, leader, "nonvoters")) == sorted(str(n) for n in (leader, other))

    def told() -> dict | None:
        raft = http("GET", f"http://127.0.0.1:{cluster.port(gone)}/status", timeout=2)[1]["store"]["raft"]
        return raft if raft["removed_by"] == leader else None
    raft = wait_for(told, 10, f"node {gone} to learn it was removed")  # it asks for a vote, the leader answers
    assert raft["state"] == "Shutdown", raft

    def notices() -> int:
        stats = http("GET", f"http://127.0.0.1:{cluster.port(leader)}/status", timeout=2)[1]["store"]["raft"]["stats"]
        return int(stats.get("removed_notices_sent", 0))
    sent = notices()
    time.sleep(2.5)  # five election timeouts: a node still campaigning would ask again, and be told again
    assert notices() == sent >= 1
    assert http("GET", f"http://127.0.0.1:{cluster.port(gone)}/status")[1]["store"]["raft"]["term"] == raft["term"]
    cluster.supervisorctl("stop", f"node{gone}-api", f"node{gone}-store", f"node{gone}-raft")
    for value in range(5):  # a majority of the two voters left
        status, doc = execute(cluster.port(other), [["INSERT INTO t VALUES(?)", value]])
        assert status == 200 and "error" not in doc["results"][0], doc
    status, doc = query(cluster.port(leader), "SELECT count(*) FROM t", level="strong")
    assert status == 200 and doc["results"][0]["values"] == [[5]], doc
    assert http("DELETE", f"http://127.0.0.1:{cluster.port(leader)}/remove", {"id": str(gone)})[0] == 200  # again
