"""Replicas never diverge: every source of time and randomness SQLite can reach is the entry's.

The same stamped entries (command version 3, as the api stamps them) are applied by nodes
that differ in everything a node can differ in: the real clock (libfaketime, years apart),
the host's time zone, how entries are batched, and a restart in the middle. Each ends with
the same content, a dump of every table and of the schema, and the same per-entry results.
The workload holds one statement per defect of issue 10's "Replicas diverge" list, and each
per-node escape is answered with a clear error that changes nothing.

With ZRAFT_TEST_NONDETERMINISTIC_APPLY=1 (the test-only switch that turns the overrides
off) the same comparison finds a difference: the test bites.

Run as ``python -m tests.component.test_determinism child DB ENTRIES OUT BATCH RESTART_AT``
it is the node that a child process plays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import pytest

from zraft.store import Command, Database, Statement, encode_command, meta
from zraft.store.determinism import NONDETERMINISTIC_ENV

REPO = Path(__file__).resolve().parents[2]
Entry = tuple[int, bytes | None]
T0_MS = 1_700_000_000_123  # 2023-11-14 22:13:20.123 UTC
FAKETIME = next((str(p) for p in sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
"""libfaketime, preloaded with FAKETIME set (not the `faketime` wrapper: the wrapper opens a
named semaphore after its PID with O_EXCL, and fails when a process killed earlier on the
machine left one of that name behind)."""


def stamped(*stmts: str | tuple[str, Any], tx: bool = False, time_ms: int = T0_MS, seed: int = 1,
            budget: int | None = None) -> bytes:
    statements = [Statement(s) if isinstance(s, str) else Statement(*s) for s in stmts]
    return encode_command(Command.stamped(statements, tx, time_ms=time_ms, seed=seed, budget=budget))


# -- the workload: one statement (or more) per defect ------------------------------------------

SCHEMA = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, note TEXT, v, created DEFAULT CURRENT_TIMESTAMP,"
    " r DEFAULT (random()), d DEFAULT (datetime('now', 'subsec')), b DEFAULT (randomblob(4)))",
    "CREATE TABLE log(id INTEGER PRIMARY KEY, what TEXT, at REAL, rnd BLOB)",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN"
    " INSERT INTO log(what, at, rnd) VALUES('ins ' || new.id, julianday('now'), randomblob(8)); END",
    "CREATE VIEW v AS SELECT id, datetime('now') AS now, random() AS r FROM t",
]
DEFECTS: dict[str, list[str | tuple[str, Any]]] = {
    "datetime(\"now\") in double quotes": ["INSERT INTO t(note, v) VALUES('dq', datetime(\"now\"))"],
    "randomblob(expr)": ["INSERT INTO t(note, v) VALUES('blob', randomblob(abs(random() % 32) + length(hex(1))))"],
    "ORDER BY random() in INSERT ... SELECT": [
        "INSERT INTO t(note, v) SELECT 'ordered', value FROM json_each('[1,2,3,4,5,6,7,8,9]') ORDER BY random()"],
    "'now' as a bound parameter or computed": [
        ("INSERT INTO t(note, v) VALUES('param', datetime(?))", ["now"]),
        ("INSERT INTO t(note, v) VALUES('named', strftime('%s', :when, 'subsec'))", {"when": "now"}),
        "INSERT INTO t(note, v) VALUES('concat', datetime('n' || 'ow', 'subsec'))",
        "INSERT INTO t(note, v) VALUES('lower', julianday(lower('NOW')))"],
    "unixepoch('subsec')": ["INSERT INTO t(note, v) VALUES('subsec', unixepoch('subsec'))"],
    "'localtime' and 'utc'": ["INSERT INTO t(note, v) VALUES('local', datetime('now', 'localtime')),"
                              " ('utc', datetime('now', 'utc')), ('both', datetime(1e9, 'unixepoch', 'localtime'))"],
    "DEFAULTs, triggers and views": [
        "INSERT INTO t(note) VALUES('defaults')",
        "INSERT INTO t(note, v) SELECT 'view', r || ' ' || now FROM v ORDER BY id LIMIT 3",
        "INSERT INTO t(note, v) VALUES('implicit', date() || time() || CURRENT_TIME || CURRENT_DATE"
        " || CURRENT_TIMESTAMP || strftime('%f') || timediff('now', '2000-01-01'))"],
    "random() in UPDATE": ["UPDATE t SET v = v || ':' || random() WHERE note = 'ordered'"],
}
ESCAPES: dict[str, tuple[str, str]] = {
    # statement -> a part of its error
    "total_changes()": ("INSERT INTO t(note, v) SELECT 'tc', total_changes()", "total_changes() counts this node"),
    "total_changes() alone": ("SELECT total_changes()", "cannot be used in a write"),
    "pragma_database_list": ("INSERT INTO t(note, v) SELECT 'file', file FROM pragma_database_list",
                             "PRAGMA database_list shows facts"),
    "dbstat": ("INSERT INTO t(note, v) SELECT 'pages', count(*) FROM dbstat", "dbstat shows facts"),
    "dbstat table": ("CREATE VIRTUAL TABLE stat USING dbstat", "virtual tables using dbstat"),
    "page_count": ("INSERT INTO t(note, v) SELECT 'pc', page_count FROM pragma_page_count", "page_count shows"),
    "PRAGMA freelist_count": ("PRAGMA freelist_count", "freelist_count shows facts"),
    "PRAGMA data_version": ("PRAGMA data_version", "data_version shows facts"),
    "CREATE TABLE temp.t": ("CREATE TABLE temp.t(x)", "temporary tables"),
    "CREATE TEMP TABLE": ("CREATE TEMP TABLE tt(x)", "temporary tables"),
    "CREATE TRIGGER temp.x": ("CREATE TRIGGER temp.x AFTER INSERT ON t BEGIN SELECT 1; END", "temporary tables"),
    "CREATE VIEW temp.v": ("CREATE VIEW temp.v AS SELECT 1", "temporary tables"),
    "CREATE INDEX temp.i": ("CREATE INDEX temp.i ON t(note)", "cannot create a TEMP index"),  # SQLite's own
    "PRAGMA temp.user_version": ("PRAGMA temp.user_version = 7", "temporary tables"),
    "PRAGMA max_page_count=1": ("PRAGMA max_page_count=1", "zraft keeps max_page_count at 4294967294"),
    "PRAGMA page_size": ("PRAGMA page_size=512", "zraft keeps page_size at 4096"),
    "PRAGMA cache_size": ("PRAGMA cache_size=10", "zraft keeps cache_size at -2000"),
    "PRAGMA mmap_size": ("PRAGMA mmap_size=268435456", "zraft keeps mmap_size at 0"),
    "PRAGMA auto_vacuum": ("PRAGMA auto_vacuum=FULL", "zraft keeps auto_vacuum at NONE"),
    "PRAGMA threads": ("PRAGMA threads=4", "zraft keeps threads at 0"),
    "PRAGMA recursive_triggers=ON": ("PRAGMA recursive_triggers=ON", "zraft keeps recursive_triggers at OFF"),
    "PRAGMA schema_version": ("PRAGMA schema_version=99", "schema_version cannot be set"),
    "PRAGMA journal_mode": ("PRAGMA journal_mode=DELETE", "disallowed pragma"),
    "foreign_keys not alone": ("PRAGMA foreign_keys=ON; SELECT 1", "must be a statement of its own"),
    "rowid 2**63-1": ("INSERT INTO t(id, note) VALUES(9223372036854775807, 'max')", "rowid 9223372036854775807"),
    "duplicate column names": ("CREATE TABLE dup AS SELECT 1 a, 2 a, 3 a, 4 a, 5 a, 6 a", "share the name 'a'"),
}
AFTER_RESTART = [
    "INSERT INTO t(note, v) VALUES('after restart', random() || ' ' || datetime('now', 'subsec'))",
    "INSERT INTO t(note, v) SELECT 'again', hex(randomblob(value)) FROM json_each('[3, 5, 7]') ORDER BY random()",
    "PRAGMA legacy_alter_table=OFF",  # as Django sends on connect: accepted, changes nothing
    "PRAGMA foreign_keys=ON",  # as pyDAL, Django, peewee send on connect: replicated
    "CREATE TABLE child(p REFERENCES t(id))",
    "INSERT INTO child VALUES(99999)",  # refused once foreign keys are on
    "INSERT INTO child VALUES(1)",
]


def stamp_of(index: int) -> tuple[int, int]:
    """The (time_ms, seed) the workload gives entry ``index``: a new instant and seed each."""
    return T0_MS + 1_001 * index, (0x9E3779B97F4A7C15 * index) % (1 << 63)


def workload() -> list[Entry]:
    """Stamped entries as the api would write them."""
    groups: list[list[str | tuple[str, Any]] | None] = [[sql] for sql in SCHEMA]
    groups += list(DEFECTS.values())
    groups.append(None)  # a no-op entry (a leader's first entry)
    groups.append([sql for sql, _ in ESCAPES.values()])  # every escape in one entry...
    groups += [[sql] for sql, _ in ESCAPES.values()]  # ... and each in its own
    groups += [[sql] for sql in AFTER_RESTART]
    entries: list[Entry] = []
    for i, stmts in enumerate(groups, start=1):
        if stmts is None:
            entries.append((i, None))
        else:
            time_ms, seed = stamp_of(i)
            entries.append((i, stamped(*stmts, time_ms=time_ms, seed=seed)))
    return entries


RESTART_AT = len(SCHEMA) + len(DEFECTS) + 1


# -- one node ---------------------------------------------------------------------------------

def dump(db: Database) -> dict[str, Any]:
    """The schema and every row of every table, in rowid order, as JSON-able values."""
    with db.read_connection() as conn:
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name").fetchall()
        tables = [name for kind, name, _, _ in schema if kind == "table" and name != "_zraft_meta"]
        rows = {name: conn.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid').fetchall() for name in tables}
        meta = conn.execute("SELECT key, value FROM _zraft_meta ORDER BY key").fetchall()
    return _jsonable({"schema": schema, "rows": rows, "meta": meta})


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def run_node(path: Path, entries: Sequence[Entry], batch: int, restart_at: int) -> dict[str, Any]:
    """Apply ``entries`` in batches of ``batch``, closing and reopening the database after
    entry ``restart_at``; return the dump and every entry's rendered results."""
    results: dict[int, Any] = {}
    db = Database(path)
    pending = list(entries)
    while pending:
        take = pending[:batch]
        if take[0][0] <= restart_at < take[-1][0]:
            take = [e for e in take if e[0] <= restart_at]
        pending = pending[len(take):]
        for r in db.apply_entries(take):
            results[r.index] = r.render()
        if take[-1][0] == restart_at:
            db.close()
            db = Database(path)
    try:
        return {"dump": dump(db), "results": {str(k): _jsonable(v) for k, v in results.items()}}
    finally:
        db.close()


def child_main(argv: list[str]) -> None:
    db_path, entries_path, out_path, batch, restart_at = argv
    raw = json.loads(Path(entries_path).read_text())
    entries = [(i, None if p is None else bytes.fromhex(p)) for i, p in raw]
    Path(out_path).write_text(json.dumps(run_node(Path(db_path), entries, int(batch), int(restart_at))))


def run_child(tmp: Path, name: str, entries: Sequence[Entry], *, batch: int, restart_at: int, tz: str,
              fake_time: str | None, nondeterministic: bool = False) -> dict[str, Any]:
    """Play a node in a child process with its own clock and time zone."""
    entries_path = tmp / f"{name}.entries.json"
    entries_path.write_text(json.dumps([(i, None if p is None else p.hex()) for i, p in entries]))
    out = tmp / f"{name}.out.json"
    env = {**os.environ, "TZ": tz, "PYTHONPATH": str(REPO)}
    env.pop(NONDETERMINISTIC_ENV, None)
    if nondeterministic:
        env[NONDETERMINISTIC_ENV] = "1"
    command = [sys.executable, "-m", "tests.component.test_determinism", "child", str(tmp / f"{name}.db"),
               str(entries_path), str(out), str(batch), str(restart_at)]
    if fake_time and FAKETIME:
        env.update(LD_PRELOAD=FAKETIME, FAKETIME=fake_time)
    subprocess.run(command, cwd=REPO, env=env, check=True, timeout=120)
    return dict(json.loads(out.read_text()))


# -- the tests --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Three nodes: one here (one batch, no restart), two children years apart under other
    time zones, batching one by one and in threes, each restarted in the middle."""
    tmp = tmp_path_factory.mktemp("nodes")
    entries = workload()
    here = json.loads(json.dumps(run_node(tmp / "here.db", entries, batch=len(entries), restart_at=0)))
    time.sleep(0 if FAKETIME else 1.1)  # without libfaketime, at least another second
    east = run_child(tmp, "east", entries, batch=1, restart_at=RESTART_AT, tz="Asia/Kolkata",
                     fake_time="@2001-02-03 04:05:06")
    west = run_child(tmp, "west", entries, batch=3, restart_at=RESTART_AT, tz="America/Los_Angeles",
                     fake_time="+400d x3")
    return [here, east, west]


def test_nodes_under_other_clocks_zones_batching_and_restarts_end_identical(nodes: list[dict[str, Any]]) -> None:
    here, east, west = nodes
    assert east["dump"] == here["dump"]
    assert west["dump"] == here["dump"]
    assert east["results"] == here["results"] == west["results"]


def _rows(node: dict[str, Any], note: str) -> list[list[Any]]:
    """Rows of t (rowid, id, note, v, created, r, d, b) with this note."""
    return [row for row in node["dump"]["rows"]["t"] if row[2] == note]


def test_every_defect_statement_ran_and_wrote_rows(nodes: list[dict[str, Any]]) -> None:
    here = nodes[0]
    for note in ("dq", "blob", "ordered", "param", "named", "concat", "lower", "subsec", "local", "utc", "defaults",
                 "view", "implicit", "after restart", "again"):
        assert _rows(here, note), note
    for name in DEFECTS:
        results = here["results"][str(_entry_of(name))]
        assert all("error" not in r for r in results), (name, results)
    assert len(here["dump"]["rows"]["log"]) == len(here["dump"]["rows"]["t"])  # the trigger fired for every row


def _entry_of(name: str) -> int:
    return len(SCHEMA) + 1 + list(DEFECTS).index(name)


def _utc(ms: int, subsec: bool = False) -> str:
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000))
    return f"{text}.{ms % 1000:03d}" if subsec else text


def test_now_is_the_stamp_in_every_spelling(nodes: list[dict[str, Any]]) -> None:
    here = nodes[0]
    dq_ms = stamp_of(_entry_of('datetime("now") in double quotes'))[0]
    dq = _rows(here, "dq")[0]
    assert dq[3] == _utc(dq_ms) and dq[4] == _utc(dq_ms)  # the value, and the DEFAULT CURRENT_TIMESTAMP
    assert dq[6] == _utc(dq_ms, subsec=True)  # DEFAULT (datetime('now', 'subsec'))
    now_ms = stamp_of(_entry_of("'now' as a bound parameter or computed"))[0]
    assert _rows(here, "param")[0][3] == _utc(now_ms)
    assert _rows(here, "concat")[0][3] == _utc(now_ms, subsec=True)
    assert _rows(here, "named")[0][3] == f"{now_ms // 1000}.{now_ms % 1000:03d}"
    assert _rows(here, "subsec")[0][3] == stamp_of(_entry_of("unixepoch('subsec')"))[0] / 1000
    local_ms = stamp_of(_entry_of("'localtime' and 'utc'"))[0]
    assert _rows(here, "local")[0][3] == _rows(here, "utc")[0][3] == _utc(local_ms)  # the store runs in UTC
    assert _rows(here, "both")[0][3] == "2001-09-09 01:46:40"
    trigger_at = {row[2]: row[3] for row in here["dump"]["rows"]["log"]}
    assert trigger_at[f"ins {dq[0]}"] == pytest.approx((dq_ms + 210_866_760_000_000) / 86_400_000)


def test_each_per_node_escape_is_refused_with_a_clear_error(nodes: list[dict[str, Any]]) -> None:
    here = nodes[0]
    together = len(SCHEMA) + len(DEFECTS) + 2
    assert len(here["results"][str(together)]) == len(ESCAPES)
    for k, (name, (_, message)) in enumerate(ESCAPES.items()):
        alone = here["results"][str(together + 1 + k)]
        assert len(alone) == 1 and message in alone[0].get("error", ""), (name, alone)
        assert message in here["results"][str(together)][k].get("error", ""), name
    assert not _rows(here, "tc") and not _rows(here, "file") and not _rows(here, "max")
    assert {name for _, name, _, _ in here["dump"]["schema"]} == {
        "t", "log", "tr", "v", "child", "_zraft_meta", "sqlite_autoindex__zraft_meta_1"}


def test_foreign_keys_pragma_is_replicated_and_enforced(nodes: list[dict[str, Any]]) -> None:
    here = nodes[0]
    last = int(max(here["results"], key=int))
    assert here["results"][str(last - 1)] == [{"error": "FOREIGN KEY constraint failed"}]
    assert "error" not in here["results"][str(last)][0]
    assert here["dump"]["rows"]["child"] == [[1, 1]]
    assert ["foreign_keys", meta.encode(1)] in here["dump"]["meta"]


@pytest.mark.skipif(FAKETIME is None, reason="needs libfaketime (faketime)")
def test_without_the_overrides_the_same_nodes_diverge(tmp_path: Path) -> None:
    """The test-only switch turns determinism off: then the comparison above finds differences."""
    entries = workload()[: len(SCHEMA) + len(DEFECTS)]
    a = run_child(tmp_path, "a", entries, batch=1, restart_at=0, tz="UTC", fake_time="@2001-02-03 04:05:06",
                  nondeterministic=True)
    b = run_child(tmp_path, "b", entries, batch=1, restart_at=0, tz="Asia/Kolkata",
                  fake_time="@2011-02-03 04:05:06", nondeterministic=True)
    assert a["dump"]["rows"]["t"] != b["dump"]["rows"]["t"]
    differing = {row[2] for row, other in zip(a["dump"]["rows"]["t"], b["dump"]["rows"]["t"], strict=True)
                 if row != other}
    assert {"dq", "param", "concat", "subsec", "local", "defaults"} <= differing


# -- in-process checks of the mechanism -------------------------------------------------------

def apply_all(db: Database, entries: Sequence[Entry], batch_sizes: Callable[[], int]) -> list[Any]:
    out: list[Any] = []
    pos = 0
    while pos < len(entries):
        n = batch_sizes()
        out += [r.render() for r in db.apply_entries(entries[pos:pos + n])]
        pos += n
    return out


def test_random_depends_on_seed_and_position_not_on_batching(tmp_path: Path) -> None:
    entries = [(1, stamped("CREATE TABLE r(x)")),
               *[(i, stamped("INSERT INTO r VALUES(random())", "INSERT INTO r VALUES(randomblob(3))",
                             "SELECT random(), random()", seed=i % 3)) for i in range(2, 12)]]
    one = apply_all(Database(tmp_path / "one.db"), entries, lambda: 1)
    many = apply_all(Database(tmp_path / "many.db"), entries, lambda: 4)
    assert one == many
    draws = [r[2]["values"][0] for r in one[1:]]
    assert draws[0] != draws[1] and draws[0] == draws[3]  # same seed, same position: same draws
    assert draws[0][0] != draws[0][1]  # each call draws anew
    with Database(tmp_path / "one.db") as db:
        lengths = db.query([Statement("SELECT length(x) FROM r WHERE typeof(x) = 'blob'")])[0]["values"]
    assert lengths == [[3]] * 10


def test_randomblob_converts_its_argument_like_sqlite(tmp_path: Path) -> None:
    args = ["'2.9'", "' 16x'", "x'3136'", "2.9", "-3", "NULL", "'abc'", "0x10"]
    with Database(tmp_path / "db.sqlite") as db:
        (out,) = db.apply_entries([(1, stamped(*(f"SELECT length(randomblob({a}))" for a in args)))])
        ours = [r["values"][0][0] for r in out.render()]
        mem = apsw.Connection(":memory:")
        theirs = [mem.execute(f"SELECT length(randomblob({a}))").get for a in args]
        assert ours == theirs
        (big,) = db.apply_entries([(2, stamped("SELECT randomblob(1e30)"))])
        assert big.render() == [{"error": "string or blob too big"}]


def test_unstamped_entries_still_apply_with_the_real_clock(tmp_path: Path) -> None:
    before = time.time()
    with Database(tmp_path / "db.sqlite") as db:
        (out,) = db.apply_entries([(1, encode_command(Command([Statement("SELECT unixepoch('subsec'), random()")])))])
        now, _ = out.render()[0]["values"][0]
        assert before - 1 <= now <= time.time() + 1


def test_the_store_runs_in_utc_whatever_the_host_zone(tmp_path: Path) -> None:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Chatham"
    time.tzset()
    try:
        with Database(tmp_path / "db.sqlite") as db:
            (out,) = db.apply_entries([(1, stamped("SELECT datetime('now', 'localtime'), datetime('now')"))])
            local, utc = out.render()[0]["values"][0]
            assert local == utc and os.environ["TZ"] == "UTC"
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_orm_connection_pragmas_are_accepted_only_at_zrafts_values(tmp_path: Path) -> None:
    accepted = ["PRAGMA legacy_alter_table=OFF", "PRAGMA recursive_triggers = 0", "PRAGMA case_sensitive_like=off",
                "PRAGMA cache_size=-2000", "PRAGMA temp_store=DEFAULT", "PRAGMA trusted_schema=ON",
                "PRAGMA busy_timeout=5000", "PRAGMA user_version=3", "PRAGMA application_id=7"]
    refused = ["PRAGMA legacy_alter_table=ON", "PRAGMA defer_foreign_keys=ON", "PRAGMA temp_store=MEMORY",
               "PRAGMA query_only=1", "PRAGMA writable_schema=ON", "PRAGMA secure_delete=FAST",
               "PRAGMA busy_timeout=1", "PRAGMA synchronous=OFF", "PRAGMA locking_mode=EXCLUSIVE"]
    with Database(tmp_path / "db.sqlite") as db:
        (ok, no) = db.apply_entries([(1, stamped(*accepted)), (2, stamped(*refused))])
        assert all("error" not in r for r in ok.render()), ok.render()
        assert all("disallowed pragma" in r.get("error", "") for r in no.render()), no.render()
        (check,) = db.apply_entries([(3, stamped("PRAGMA user_version", "PRAGMA recursive_triggers",
                                                 "PRAGMA legacy_alter_table"))])
        assert [r["values"][0][0] for r in check.render()] == [3, 0, 0]


def test_foreign_keys_take_effect_from_the_next_entry_whatever_the_batching(tmp_path: Path) -> None:
    entries = [(1, stamped("CREATE TABLE p(id INTEGER PRIMARY KEY)", "CREATE TABLE c(p REFERENCES p(id))")),
               (2, stamped("PRAGMA foreign_keys=ON", "INSERT INTO c VALUES(1)")),  # still off in this entry
               (3, stamped("INSERT INTO c VALUES(2)")),
               (4, stamped("INSERT INTO p VALUES(3)", "PRAGMA foreign_keys(OFF)", "INSERT INTO c VALUES(4)",
                           "INSERT INTO nosuch VALUES(1)", tx=True)),  # rolled back: stays on
               (5, stamped("INSERT INTO c VALUES(5)")),
               (6, stamped("PRAGMA foreign_keys='no'")),
               (7, stamped("INSERT INTO c VALUES(7)", "PRAGMA foreign_keys"))]
    runs = []
    for name, sizes in (("one", lambda: 1), ("all", lambda: 7), ("two", lambda: 2)):
        runs.append(apply_all(Database(tmp_path / f"{name}.db"), entries, sizes))
    assert runs[0] == runs[1] == runs[2]
    out = runs[0]
    assert out[1][1] == {"last_insert_id": 1, "rows_affected": 1}
    assert out[2] == [{"error": "FOREIGN KEY constraint failed"}]
    assert out[4] == [{"error": "FOREIGN KEY constraint failed"}]
    assert out[6][1]["values"] == [[0]]


def test_deferred_foreign_key_violations_fail_their_statement_or_entry(tmp_path: Path) -> None:
    with Database(tmp_path / "db.sqlite") as db:
        out = db.apply_entries([
            (1, stamped("CREATE TABLE p(id INTEGER PRIMARY KEY)",
                        "CREATE TABLE d(p REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")),
            (2, stamped("PRAGMA foreign_keys=ON")),
            (3, stamped("INSERT INTO d VALUES(8)", "INSERT INTO p VALUES(1)", "INSERT INTO d VALUES(1)")),
            (4, stamped("INSERT INTO d VALUES(9)", "INSERT INTO p VALUES(9)", tx=True)),
            (5, stamped("INSERT INTO d VALUES(10)", tx=True)),
            (6, stamped("SELECT p FROM d ORDER BY p")),
        ])
        assert out[2].render()[0] == {"error": "FOREIGN KEY constraint failed"}
        assert out[4].render()[-1] == {"error": "FOREIGN KEY constraint failed"}
        assert out[5].render()[0]["values"] == [[1], [9]]
        db.apply_entries([(7, stamped("INSERT INTO p VALUES(2)"))])  # the batch commits: nothing was left pending


def test_rowid_and_autoincrement_exhaustion_are_refused(tmp_path: Path) -> None:
    with Database(tmp_path / "db.sqlite") as db:
        (out,) = db.apply_entries([(1, stamped(
            "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v)", "INSERT INTO a(v) VALUES(1)",
            "INSERT INTO a VALUES(9223372036854775807, 2)", "UPDATE a SET id = 9223372036854775807",
            "UPDATE sqlite_sequence SET seq = 9223372036854775807", "INSERT INTO a(v) VALUES(3)",
            "SELECT id FROM a ORDER BY id"))])
        results = out.render()
        assert "rowid 9223372036854775807" in results[2]["error"]
        assert "rowid 9223372036854775807" in results[3]["error"]
        assert "sqlite_sequence may not reach" in results[4]["error"]
        assert results[6]["values"] == [[1], [2]]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    child_main(sys.argv[2:])
