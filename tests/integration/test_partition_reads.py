"""Read levels under a partition: `none` may be stale, `linearizable` and `strong` never are.

The partition: SIGSTOP on the leader's raft process cuts it off from its peers while its store
and API keep serving. The other two elect a new leader and take a write. The old leader's node
still holds the old data, so a read there at `none` can see it; at `linearizable` or `strong` it
must either see the new value or fail, never return the old one, including right after the old
leader resumes and still believes it leads.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, http, wait_for

pytestmark = pytest.mark.integration


def read_value(port: int, level: str) -> tuple[int, str | None]:
    """(status, value) of the register at `level`; value None when the read failed."""
    try:
        status, body = http("POST", f"http://127.0.0.1:{port}/db/query?level={level}&timeout=2s",
                            ["SELECT v FROM reg WHERE id = 1"], timeout=8)
    except OSError:
        return 0, None
    if status != 200 or not isinstance(body, dict) or body.get("error"):
        return status, None
    result = body["results"][0]
    if "error" in result or not result.get("values"):
        return status, None
    return status, result["values"][0][0]


def test_stale_reads_only_at_level_none(cluster: LocalCluster) -> None:
    first = cluster.port(1)
    status, body = execute(first, ["CREATE TABLE reg (id INTEGER PRIMARY KEY, v TEXT)",
                                   "INSERT INTO reg(id, v) VALUES(1, 'old')"])
    assert status == 200, body
    old_leader = wait_for(cluster.leader_id, 10, "a leader")
    old_port = cluster.port(old_leader)
    wait_for(lambda: read_value(old_port, "none")[1] == "old", 10, "the old value everywhere")
    raft_pid = cluster.pid(old_leader, "raft")
    assert raft_pid
    os.kill(raft_pid, signal.SIGSTOP)
    try:
        others = [i for i in (1, 2, 3) if i != old_leader]
        new_leader = wait_for(lambda: next((s.id for s in cluster.status() if s.leader and s.id != old_leader),
                                           None), 20, "a new leader among the majority")
        status, body = wait_for(lambda: (r := execute(cluster.port(new_leader),
                                                      ["UPDATE reg SET v = 'new' WHERE id = 1"]))[0] == 200 and r,
                                15, "the write on the majority side")
        assert body["results"][0]["rows_affected"] == 1
        assert read_value(cluster.port(others[0]), "linearizable")[1] == "new"

        # The isolated node still serves its local copy: a stale read is possible at `none`.
        assert read_value(old_port, "none")[1] == "old"
        for level in ("linearizable", "strong"):
            assert read_value(old_port, level)[1] in ("new", None), level
    finally:
        os.kill(raft_pid, signal.SIGCONT)

    # Resumed, the old leader briefly still believes it leads: reads must not be stale then.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for level in ("linearizable", "strong"):
            assert read_value(old_port, level)[1] in ("new", None), level
    wait_for(lambda: read_value(old_port, "none")[1] == "new", 20, "the old leader to catch up")
    assert read_value(old_port, "linearizable")[1] == "new"
