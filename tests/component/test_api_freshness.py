"""rqlite's freshness_strict and noparse over HTTP against fake raft/store processes.

freshness_strict: a level=none read is refused ("stale read") when the store says its data has
lagged a known commit for longer than `freshness` (status `lag_ms`), or cannot say (None);
plain `freshness` ignores the store's lag. noparse: strong reads skip rewriting, writes do not.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest

from tests.component.test_api_http import Env, start_env, stop_env
from tests.component.test_api_support import FakePublisher, FakeServer, leader_endpoint
from zraft.wire.messages import ClientOptions, ClientQuery, Query
from zraft.wire.sql import Statement

pytestmark = pytest.mark.timeout(30)

STALE = (200, {"results": [], "error": "stale read"})
NONE_READ = "/db/query?q=SELECT+1&level=none&freshness=1s"


def in_touch_with(leader: int) -> Iterator[Env]:
    """Node 1 hears commit notices naming `leader`, so plain freshness is satisfied."""
    env = start_env(leader=leader)
    publisher = FakePublisher(env.node.config.raft_pub, leader=leader)
    try:
        service = env.node.process.service  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while service.leader_cache.fresh() != leader:
            assert time.monotonic() < deadline, "no commit notice arrived"
            time.sleep(0.01)
        yield env
    finally:
        publisher.stop()
        stop_env(env)


@pytest.fixture
def follower() -> Iterator[Env]:
    yield from in_touch_with(leader=2)


@pytest.fixture
def leader() -> Iterator[Env]:
    yield from in_touch_with(leader=1)


def served(env: Env, path: str) -> bool:
    status, doc = env.node.json("GET", path)
    if (status, doc) == STALE:
        return False
    assert status == 200 and "values" in doc["results"][0], doc
    return True


def test_strict_read_is_refused_when_the_store_lags_beyond_freshness(follower: Env) -> None:
    follower.store.lag_ms = 5000
    assert not served(follower, NONE_READ + "&freshness_strict")
    assert follower.store_srv.of(Query) == []  # refused before reading anything
    assert served(follower, NONE_READ)  # plain freshness only asks for leader contact


def test_strict_read_is_served_when_the_store_is_within_freshness(follower: Env) -> None:
    for lag_ms in (0, 400):
        follower.store.lag_ms = lag_ms
        assert served(follower, NONE_READ + "&freshness_strict"), lag_ms
    follower.store.lag_ms = 1500
    assert served(follower, "/db/query?q=SELECT+1&level=none&freshness=2s&freshness_strict")
    assert not served(follower, NONE_READ + "&freshness_strict")


def test_strict_read_is_refused_when_the_lag_is_unknown(follower: Env) -> None:
    follower.store.lag_ms = None  # the store restarted behind the commit index
    assert not served(follower, NONE_READ + "&freshness_strict")
    assert served(follower, NONE_READ)


def test_strict_read_on_the_unified_endpoint(follower: Env) -> None:
    follower.node.config.db_path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(follower.node.config.db_path).close()
    follower.store.lag_ms = 5000
    path = "/db/request?level=none&freshness=1s"
    assert follower.node.json("POST", path + "&freshness_strict", ["SELECT 1"]) == STALE
    status, doc = follower.node.json("POST", path, ["SELECT 1"])
    assert status == 200 and "values" in doc["results"][0]


def test_strict_read_on_the_leader_checks_its_store_too(leader: Env) -> None:
    """Deliberately stricter than rqlite, which skips every freshness check on the leader: a
    leader whose store is stuck serves old data just as well."""
    leader.store.lag_ms = 5000
    assert not served(leader, NONE_READ + "&freshness_strict")
    assert served(leader, NONE_READ)
    leader.store.lag_ms = 0
    assert served(leader, NONE_READ + "&freshness_strict")


def test_noparse_skips_rewriting_strong_reads_but_never_writes() -> None:
    env = start_env()
    try:
        assert env.node.json("POST", "/db/query?level=strong&noparse", ["SELECT random()"])[0] == 200
        assert env.node.json("POST", "/db/execute?noparse", ["INSERT INTO t VALUES(random())"])[0] == 200
        assert env.node.json("POST", "/db/query?level=strong", ["SELECT random()"])[0] == 200
        read, write, rewritten_read = env.proposals()
        assert read.read_only and read.statements[0].sql == "SELECT random()"
        assert "random" not in write.statements[0].sql.lower()
        assert "random" not in rewritten_read.statements[0].sql.lower()
    finally:
        stop_env(env)


def test_noparse_travels_with_a_forwarded_strong_read() -> None:
    env = start_env(leader=2)
    leader = FakeServer(env.cluster.peer(2).api_zmq, leader_endpoint(2))
    try:
        status, _ = env.node.json("POST", "/db/query?level=strong&noparse", ["SELECT random()"])
        assert status == 200
        [msg] = leader.of(ClientQuery)
        assert msg.statements == [Statement("SELECT random()")]
        assert msg.options == ClientOptions(noparse=True, forwarded=True)
    finally:
        leader.stop()
        stop_env(env)
