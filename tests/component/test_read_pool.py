"""Reads that cannot block writes: the read pool (zraft.store.reads.ReadPool) and the store
process that runs its queries there.

- the pool gives exactly the results the store gave before it (the execute path's rendering),
  chunked rows included;
- a long read runs while entries keep being applied, and WaitApplied answers stay fast
  (p99 under 1 s; before the pool, one 5 s read held every write for 4.9 s);
- every read has a time limit (store.read_timeout_ms), db_timeout can only shorten it;
- a result over store.max_result_bytes is a clear per-statement error, found while fetching,
  so that the store's memory stays bounded; a reply still too large to decode is an error;
- the pool's queue is bounded: beyond it a read is answered busy.
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
from typing import Any

import orjson
import pytest
import zmq

from tests.component.fakes import FakeRaft
from tests.component.test_store_proc import call as store_call
from zraft.config import NodeConfig, Peer, StoreSettings, render
from zraft.raft.types import Entry, EntryKind
from zraft.store.command import Command, Statement, encode_command
from zraft.store.db import Database
from zraft.store.execute import execute_to_result
from zraft.store.reads import (
    CHUNK_ROWS,
    TIMEOUT_ERROR,
    TOO_LARGE_ERROR,
    ReadAnswer,
    ReadJob,
    ReadOptions,
    ReadPool,
    open_reader,
    read_transaction,
)
from zraft.store.results import render as render_result
from zraft.wire import decode, encode
from zraft.wire.codec import MAX_HEADER_BYTES
from zraft.wire.messages import (
    AppliedResult,
    Error,
    Query,
    QueryOptions,
    QueryResult,
    WaitApplied,
    WireMessage,
)

FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
"""A read that never ends by itself."""


# == the pool alone ==========================================================================
def entry(index: int, *sql: str | tuple[str, list[Any]]) -> tuple[int, bytes]:
    statements = [Statement(s) if isinstance(s, str) else Statement(s[0], s[1]) for s in sql]
    return index, encode_command(Command(statements, transaction=False))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "db.sqlite")
    database.apply_entries([
        entry(1, "CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT, b BLOB, d DATETIME, ok BOOLEAN, r REAL)"),
        entry(2, ("INSERT INTO foo VALUES (1, 'fiona', x'0001ff', '2024-01-02 03:04:05', 1, 1.5)", []),
              ("INSERT INTO foo VALUES (2, NULL, NULL, 1700000000, 0, NULL)", []),
              ("INSERT INTO foo(id, name) VALUES (3, 'ünïcode \"quoted\"')", [])),
        entry(3, "CREATE TABLE many (n INTEGER, t TEXT)",
              f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {3 * CHUNK_ROWS + 7}) "
              "INSERT INTO many SELECT x, printf('row %d', x) FROM c"),
    ])
    try:
        yield database
    finally:
        database.close()


class Answers:
    """Collects a pool's answers (called on its worker threads)."""

    def __init__(self) -> None:
        self.got: dict[Any, tuple[ReadAnswer, float]] = {}
        self._cond = threading.Condition()

    def __call__(self, job: ReadJob, answer: ReadAnswer) -> None:
        with self._cond:
            self.got[job.tag] = (answer, time.monotonic())
            self._cond.notify_all()

    def wait(self, tag: Any, timeout_s: float = 30) -> tuple[ReadAnswer, float]:
        with self._cond:
            assert self._cond.wait_for(lambda: tag in self.got, timeout_s), f"no answer for {tag}"
            return self.got[tag]


def plain(results: list[Any]) -> Any:
    """What a receiver decodes: the results as JSON and back."""
    return orjson.loads(orjson.dumps(results))


def before_the_pool(db: Database, sqls: list[str], options: ReadOptions) -> list[Any]:
    """The read path as it was: execute.execute_to_result for each statement, then render."""
    reader = open_reader(db.path)
    try:
        with read_transaction(reader):
            raw = [execute_to_result(reader.conn, reader.guard, Statement(sql), read_only=True,
                                     qualify=options.qualify_columns) for sql in sqls]
    finally:
        reader.close()
    return plain([render_result(r, associative=options.associative, blob_array=options.blob_array, query=True)
                  for r in raw])


SHAPES = [
    "SELECT * FROM foo ORDER BY id",
    "SELECT * FROM foo WHERE 0",
    "SELECT n, t FROM many ORDER BY n",  # several chunks
    "SELECT 1, 2.5, 'a', NULL, x'53514C697465'",
    "SELECT count(*) FROM many; SELECT max(n) FROM many",  # the last statement gives the result
    "SELECT * FROM nope",
    "INSERT INTO foo(id) VALUES (9)",
    "PRAGMA table_info(foo)",
    "SELECT name FROM sqlite_master ORDER BY name",
    "EXPLAIN SELECT 1",
    "-- only a comment",
]


@pytest.mark.parametrize("options", [ReadOptions(), ReadOptions(associative=True), ReadOptions(blob_array=True),
                                     ReadOptions(qualify_columns=True)], ids=repr)
def test_the_pool_gives_the_results_the_store_gave_before(db: Database, options: ReadOptions) -> None:
    answers = Answers()
    pool = ReadPool(db.path, answers, workers=2)
    try:
        assert pool.submit(ReadJob([Statement(s) for s in SHAPES], options, tag="shapes"))
        answer, _ = answers.wait("shapes")
    finally:
        pool.close()
    assert not answer.failure and answer.index == db.applied_index() == 3
    assert plain(answer.results) == before_the_pool(db, SHAPES, options)
    index, direct = db.query_with_index([Statement(s) for s in SHAPES], associative=options.associative,
                                        blob_array=options.blob_array, qualify_columns=options.qualify_columns)
    assert index == 3 and plain(direct) == plain(answer.results)
    rows = plain(answer.results)[2]
    assert len(rows["rows" if options.associative else "values"]) == 3 * CHUNK_ROWS + 7


def test_the_default_time_limit_ends_a_runaway_read(db: Database) -> None:
    answers = Answers()
    pool = ReadPool(db.path, answers, workers=1, timeout_s=0.5)
    try:
        started = time.monotonic()
        pool.submit(ReadJob([Statement(FOREVER), Statement("SELECT 1")], tag="runaway"))
        answer, at = answers.wait("runaway")
    finally:
        pool.close()
    assert 0.45 < at - started < 2.0
    # the limit is the whole read's: the statement after the runaway one has no time left
    assert answer.results == [{"error": TIMEOUT_ERROR}, {"error": TIMEOUT_ERROR}]


@pytest.mark.parametrize("pool_s, db_timeout_s", [(5.0, 0.3), (0.3, 5.0)])
def test_db_timeout_and_the_read_limit_the_smaller_wins(db: Database, pool_s: float, db_timeout_s: float) -> None:
    answers = Answers()
    pool = ReadPool(db.path, answers, workers=1, timeout_s=pool_s)
    try:
        started = time.monotonic()
        pool.submit(ReadJob([Statement(FOREVER)], ReadOptions(db_timeout_s=db_timeout_s), tag="read"))
        answer, at = answers.wait("read")
    finally:
        pool.close()
    assert 0.25 < at - started < 2.0
    assert answer.results == [{"error": TIMEOUT_ERROR}]


def test_db_timeout_counts_per_statement_and_the_job_deadline_for_all(db: Database) -> None:
    answers = Answers()
    pool = ReadPool(db.path, answers, workers=1, timeout_s=30)
    try:
        started = time.monotonic()
        pool.submit(ReadJob([Statement(FOREVER), Statement("SELECT 1"), Statement(FOREVER)],
                            ReadOptions(db_timeout_s=0.2), tag="per statement"))
        answer, at = answers.wait("per statement")
        assert plain(answer.results) == [{"error": TIMEOUT_ERROR},
                                         {"columns": ["1"], "types": ["integer"], "values": [[1]]},
                                         {"error": TIMEOUT_ERROR}]
        assert 0.35 < at - started < 2.0
        pool.submit(ReadJob([Statement(FOREVER)], deadline=time.monotonic() + 0.3, tag="deadline"))
        assert answers.wait("deadline")[0].results == [{"error": TIMEOUT_ERROR}]
        pool.submit(ReadJob([Statement("SELECT 1")], deadline=time.monotonic() - 1, tag="expired"))
        assert answers.wait("expired")[0].expired
    finally:
        pool.close()


def test_a_result_over_the_cap_is_a_clear_error_and_the_next_statements_still_run(db: Database) -> None:
    answers = Answers()
    cap = 1 << 20
    pool = ReadPool(db.path, answers, workers=1, max_result_bytes=cap)
    big = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, 'some text' FROM c"
    fits = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000) SELECT x FROM c"
    try:
        pool.submit(ReadJob([Statement(big), Statement("SELECT 1"), Statement(f"SELECT zeroblob({cap + 1})"),
                             Statement(fits)], tag="big"))
        answer, _ = answers.wait("big")
    finally:
        pool.close()
    results = plain(answer.results)
    assert results[0]["error"].startswith(TOO_LARGE_ERROR) and "store.max_result_bytes" in results[0]["error"]
    assert results[0].keys() == {"error"}
    assert results[1]["values"] == [[1]]
    assert results[2]["error"].startswith("string or blob too big") and str(cap) in results[2]["error"]
    assert len(results[3]["values"]) == 50000
    assert len(orjson.dumps(answer.results)) <= cap
    assert answer.count(TOO_LARGE_ERROR) == 1


def test_the_budget_is_the_whole_read(db: Database) -> None:
    """Each statement alone fits; together they do not: the one that crosses gets the error."""
    answers = Answers()
    one = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000) SELECT x FROM c"
    size = len(orjson.dumps(db.query([Statement(one)])[0]))
    pool = ReadPool(db.path, answers, workers=1, max_result_bytes=int(size * 1.5))
    try:
        pool.submit(ReadJob([Statement(one), Statement(one)], tag="two"))
        results = plain(answers.wait("two")[0].results)
    finally:
        pool.close()
    assert len(results[0]["values"]) == 60000
    assert results[1]["error"].startswith(TOO_LARGE_ERROR)


def test_a_full_queue_refuses_and_close_interrupts_running_reads(db: Database) -> None:
    answers = Answers()
    pool = ReadPool(db.path, answers, workers=1, max_queued=2)
    try:
        assert pool.submit(ReadJob([Statement(FOREVER)], tag="running"))
        deadline = time.monotonic() + 5
        while pool.running == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert pool.submit(ReadJob([Statement("SELECT 1")], tag="queued 1"))
        assert pool.submit(ReadJob([Statement("SELECT 1")], tag="queued 2"))
        assert not pool.submit(ReadJob([Statement("SELECT 1")], tag="refused"))
        assert pool.queued == 2
    finally:
        started = time.monotonic()
        pool.close()
    assert time.monotonic() - started < 2
    assert answers.wait("running")[0].results == [{"error": TIMEOUT_ERROR}]
    assert not pool.submit(ReadJob([Statement("SELECT 1")], tag="after close"))


def test_reads_see_their_own_snapshot_while_the_writer_applies(db: Database) -> None:
    """A long read holds its snapshot (applied index read inside it) while the writer commits
    beside it: WAL, one connection per worker."""
    answers = Answers()
    pool = ReadPool(db.path, answers, workers=2)
    slow = ("SELECT (SELECT count(*) FROM many), "
            "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c),"
            " (SELECT count(*) FROM many)")
    try:
        pool.submit(ReadJob([Statement(slow)], tag="slow"))
        time.sleep(0.05)
        started = time.monotonic()
        db.apply_entries([entry(4, "INSERT INTO many VALUES (0, 'new')")])
        assert time.monotonic() - started < 0.5
        answer, _ = answers.wait("slow")
    finally:
        pool.close()
    count = 3 * CHUNK_ROWS + 7
    assert answer.index == 3 and plain(answer.results)[0]["values"] == [[count, 3000000, count]]


# == the store process =========================================================================
def make_config(tmp_path: Path, **store: int) -> tuple[NodeConfig, Path]:
    data = tmp_path / "n1"
    data.mkdir()
    peer = Peer(1, "tcp://127.0.0.1:1", "127.0.0.1:2", "tcp://127.0.0.1:3")
    config = NodeConfig(id=1, data_dir=data, peers=(peer,), raft_rpc=f"ipc://{data}/raft.sock",
                        raft_pub=f"ipc://{data}/raft-pub.sock", store_rpc=f"ipc://{data}/store.sock",
                        store_pub=f"ipc://{data}/store-pub.sock", store=StoreSettings(**store))
    path = data / "zraft.toml"
    path.write_text(render(config))
    return config, path


class Store:
    """A store process (its own OS process, as in production) fed by a FakeRaft."""

    def __init__(self, tmp_path: Path, **store: int) -> None:
        self.config, path = make_config(tmp_path, **store)
        self.raft = FakeRaft(self.config).__enter__()
        self.raft.commit_entries([Entry(1, 1, EntryKind.NORMAL, b""),
                                  command_entry(2, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")])
        self.proc = subprocess.Popen([sys.executable, "-m", "zraft", "run", "store", "--config", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ctx = zmq.Context.instance()
        self.index = 2
        assert isinstance(self.call(Query(id=1, statements=[Statement("SELECT 1")], min_applied=2)), QueryResult)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.raft.__exit__()

    def dealer(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.config.store_rpc)
        return sock

    def call(self, msg: WireMessage, timeout_s: float = 30) -> WireMessage:
        return store_call(self.config, msg, timeout_s)

    def commit(self, *sql: str) -> int:
        self.index += 1
        self.raft.commit_entries([command_entry(self.index, *sql)])
        return self.index

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")


def command_entry(index: int, *sql: str) -> Entry:
    cmd = Command([Statement(s) for s in sql], transaction=False)
    return Entry(1, index, EntryKind.NORMAL, encode_command(cmd))


@pytest.fixture
def store_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Store] = []

    def make(**settings: int) -> Store:
        store = Store(tmp_path, **settings)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def write_latencies(store: Store, seconds: float) -> list[float]:
    """Commit one INSERT at a time and time its WaitApplied answer, for `seconds`."""
    sock = store.dealer()
    latencies = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            index = store.commit(f"INSERT INTO t(v) VALUES ('w{store.index}')")
            started = time.monotonic()
            sock.send_multipart(encode(WaitApplied(id=index, index=index, term=1, timeout_ms=30_000)))
            assert sock.poll(30_000)
            reply = decode(sock.recv_multipart())
            assert isinstance(reply, AppliedResult), reply
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
    finally:
        sock.close()
    return sorted(latencies)


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def test_writes_are_applied_while_a_long_read_runs(store_factory: Any) -> None:
    """The defect: one long SELECT held the store's only thread, so every write timed out.
    Measured before the pool (this test's read, 5 s): the one write tried took 4.9 s."""
    store = store_factory()
    reader = store.dealer()
    try:
        started = time.monotonic()
        reader.send_multipart(encode(Query(id=7, statements=[Statement(FOREVER)], min_applied=2, timeout_ms=30_000,
                                           options=QueryOptions(db_timeout_ms=5_000))))
        time.sleep(0.1)
        latencies = write_latencies(store, 4.5)
        assert reader.poll(10_000)
        read = decode(reader.recv_multipart())
        took = time.monotonic() - started
    finally:
        reader.close()
    assert isinstance(read, QueryResult) and read.results == [{"error": TIMEOUT_ERROR}]
    assert 4.9 < took < 7
    print(f"\nwrites during a 5 s read: {len(latencies)}, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {p99(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert len(latencies) > 50
    assert p99(latencies) < 1.0


def test_the_store_s_default_read_limit_ends_a_runaway_read(store_factory: Any) -> None:
    store = store_factory(read_timeout_ms=800)
    started = time.monotonic()
    # no db_timeout, and a request timeout far away: the store's own limit ends it
    reply = store.call(Query(id=3, statements=[Statement(FOREVER)], min_applied=2, timeout_ms=60_000))
    assert isinstance(reply, QueryResult) and reply.results == [{"error": TIMEOUT_ERROR}]
    assert 0.7 < time.monotonic() - started < 3
    # db_timeout shortens it
    started = time.monotonic()
    reply = store.call(Query(id=4, statements=[Statement(FOREVER)], min_applied=2,
                             options=QueryOptions(db_timeout_ms=200)))
    assert isinstance(reply, QueryResult) and reply.results == [{"error": TIMEOUT_ERROR}]
    assert time.monotonic() - started < 0.7


TEN_MILLION = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000) "
               "SELECT x, 'a row of some text' FROM c")


def test_ten_million_rows_give_a_clear_error_and_the_store_stays_small(store_factory: Any) -> None:
    """Before: 10 M rows took the store to 3 GB and the reply, over the wire's 64 MiB, was
    dropped (the client waited out its timeout). Now the default cap (32 MiB) stops the read
    while fetching, with an error in the statement's result."""
    store = store_factory()
    baseline = store.peak_rss_mb()
    reply = store.call(Query(id=5, statements=[Statement(TEN_MILLION), Statement("SELECT count(*) FROM t")],
                             min_applied=2, timeout_ms=60_000), timeout_s=60)
    assert isinstance(reply, QueryResult), reply
    assert reply.results[0]["error"].startswith(TOO_LARGE_ERROR)
    assert "33554432 bytes (store.max_result_bytes)" in reply.results[0]["error"]
    assert reply.results[1]["values"] == [[0]]
    peak = store.peak_rss_mb()
    print(f"\nstore peak RSS: {baseline:.0f} MB at start, {peak:.0f} MB after a 10 M row read")
    assert peak < baseline + 250


def test_a_result_just_under_the_cap_arrives_whole(store_factory: Any) -> None:
    store = store_factory(max_result_bytes=4 << 20)
    sql = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
           "SELECT x, 'a row of some text' FROM c")
    reply = store.call(Query(id=6, statements=[Statement(sql.format(n=100_000))], min_applied=2))
    assert isinstance(reply, QueryResult) and len(reply.results[0]["values"]) == 100_000
    assert len(orjson.dumps(reply.results)) < 4 << 20
    reply = store.call(Query(id=7, statements=[Statement(sql.format(n=200_000))], min_applied=2))
    assert isinstance(reply, QueryResult) and reply.results[0]["error"].startswith(TOO_LARGE_ERROR)


def test_too_many_reads_are_answered_busy(store_factory: Any) -> None:
    store = store_factory(read_workers=1, max_queued_reads=1)
    sock = store.dealer()
    try:
        for request_id in (1, 2, 3):
            sock.send_multipart(encode(Query(id=request_id, statements=[Statement(FOREVER)], min_applied=2,
                                             options=QueryOptions(db_timeout_ms=1_000))))
            time.sleep(0.1)
        replies: dict[int, WireMessage] = {}
        while len(replies) < 3:
            assert sock.poll(10_000)
            reply = decode(sock.recv_multipart())
            assert isinstance(reply, (QueryResult, Error))
            replies[reply.id] = reply
    finally:
        sock.close()
    busy = replies[3]
    assert isinstance(busy, Error) and busy.code == "busy" and busy.message == "too many reads"
    for request_id in (1, 2):
        done = replies[request_id]
        assert isinstance(done, QueryResult) and done.results == [{"error": TIMEOUT_ERROR}]
    status = store.call(Query(id=9, statements=[Statement("SELECT 1")], min_applied=2))
    assert isinstance(status, QueryResult)


def test_a_write_result_too_large_to_send_is_an_error_not_silence(store_factory: Any) -> None:
    """A result the receiver could not decode (header over MAX_HEADER_BYTES) would be dropped
    there: the store answers with an error instead."""
    store = store_factory()
    size = MAX_HEADER_BYTES + (1 << 20)
    index = store.commit(f"SELECT printf('%.*c', {size}, 'x')")
    reply = store.call(WaitApplied(id=index, index=index, term=1))
    assert isinstance(reply, Error) and reply.code == "result_unavailable", reply
    assert "too large to send" in reply.message
    small = store.commit("INSERT INTO t(v) VALUES ('after')")
    assert isinstance(store.call(WaitApplied(id=small, index=small, term=1)), AppliedResult)
