"""A rolling restart costs no write (issue 12): every node of a 3-node cluster, the leader
included, is stopped and started in turn while 4 writers write through followers.

What makes it work: a leader told to stop hands leadership over first and serves until its
appended entries commit (raft_proc.RaftProcess._hand_off_before_exit); an api that finds no
other node leading waits and asks again within the request's deadline instead of failing
(service.LeaderWait); a stopping api answers forwarded requests "not leader" and a
forward that cannot reach its target gives up on it after 0.5 s, so nothing waits out its
deadline on a node that is gone.

A writer whose node refuses the connection (that node is the one restarting) tries the next
node: nothing was sent. Any other failure counts: an error answer is a failed write, a
connection that broke after the request was sent is an "outcome unknown"."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from http.client import HTTPConnection, HTTPException

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.helpers import execute, http, query, wait_for

pytestmark = pytest.mark.timeout(300)
WRITERS = 4



class Writers:
    """WRITERS threads inserting rows through nodes other than the current leader."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.leader = cluster.leader_id() or 1
        self.down: int | None = None
        self.outcomes: Counter[str] = Counter()
        self.problems: list[str] = []
        self.acknowledged: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = iter(range(1, 10**9))
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(WRITERS)]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            with self._lock:
                value = next(self._next)
            nodes = [n for n in range(1, self.cluster.nodes + 1) if n not in (self.leader, self.down)]
            rng.shuffle(nodes)
            self._write(value, nodes + [n for n in range(1, self.cluster.nodes + 1) if n not in nodes])

    def _write(self, value: int, nodes: list[int]) -> None:
        body = json.dumps([["INSERT INTO t(v) VALUES(?)", value]])
        for node in nodes:
            conn = HTTPConnection("127.0.0.1", self.cluster.port(node), timeout=15)
            try:
                conn.connect()
            except OSError:
                continue  # refused: that node is down, nothing was sent
            try:
                conn.request("POST", "/db/execute", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                status, text = response.status, response.read()
            except (OSError, HTTPException) as exc:
                self._note("unknown", f"node {node}: {type(exc).__name__}: {exc}")
                return
            finally:
                conn.close()
            results = json.loads(text).get("results", []) if status == 200 else []
            if status == 200 and results and "error" not in results[0]:
                with self._lock:
                    self.outcomes["ok"] += 1
                    self.acknowledged.append(value)
            else:
                self._note("failed", f"node {node}: {status} {text[:200]!r}")
            return
        self._note("no node", "every node refused the connection")

    def _note(self, outcome: str, detail: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.problems.append(detail)


def restart(cluster: LocalCluster, node: int, writers: Writers) -> float:
    """Stop the node's processes (api first, as supervisord orders them), start them again,
    wait until it serves reads; the seconds it took."""
    started = time.monotonic()
    writers.down = node
    programs = [f"node{node}-api", f"node{node}-store", f"node{node}-raft"]
    assert cluster.supervisorctl("stop", *programs).returncode == 0
    assert cluster.supervisorctl("start", *reversed(programs)).returncode == 0
    wait_for(lambda: http("GET", f"http://127.0.0.1:{cluster.port(node)}/readyz", timeout=2)[0] == 200,
             30, f"node {node} ready again")
    writers.down = None
    writers.leader = wait_for(cluster.leader_id, 30, "a leader")
    return time.monotonic() - started


def test_rolling_restart_with_writers_through_followers_loses_and_fails_nothing(cluster: LocalCluster) -> None:
    assert execute(cluster.port(1), ["CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)"])[0] == 200
    first_leader = wait_for(cluster.leader_id, 30, "a leader")
    order = [n for n in (1, 2, 3) if n != first_leader] + [first_leader]
    with Writers(cluster) as writers:
        time.sleep(1.0)
        times = [restart(cluster, node, writers) for node in order]
        time.sleep(1.0)
    print(f"restarts {[round(t, 2) for t in times]} s (leader last); outcomes {dict(writers.outcomes)}")
    assert writers.outcomes["ok"] > 100, writers.outcomes
    assert writers.outcomes["failed"] == 0 and writers.outcomes["unknown"] == 0, writers.problems[:10]
    leader = wait_for(cluster.leader_id, 30, "a leader")
    status, doc = query(cluster.port(leader), "SELECT v FROM t", level="strong")
    assert status == 200, doc
    stored = {row[0] for row in doc["results"][0].get("values", [])}
    assert set(writers.acknowledged) <= stored, sorted(set(writers.acknowledged) - stored)[:10]
