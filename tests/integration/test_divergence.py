"""The differential test that hunts for divergence (zraft.chaos.divergence, `zraft diverge`).

- The generator reaches every source of time and randomness the issue lists, writes SQL that
  SQLite mostly accepts, and gives the same cases for the same seed.
- The comparison tells 1, 1.0, '1' and x'31' apart, and a missing table from an empty one.
- Short runs on a real cluster (nodes on different libfaketime clocks and time zones, stores
  killed -9 mid-request):
  - a control without time or randomness finds nothing (the harness makes no false alarms);
  - the full grammar finds nothing with the store's deterministic apply;
  - with the deterministic apply switched off (ZRAFT_TEST_NONDETERMINISTIC_APPLY=1 in the
    stores' environment) it must find a divergence: the test bites.

`zraft diverge --cases N --seed S` is the long version.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from zraft.chaos.divergence import (
    DivergeOptions,
    Summary,
    compare,
    digest,
    generate,
    run,
    with_environment,
)
from zraft.chaos.sqlgen import Case, Grammar, cases

needs_faketime = pytest.mark.skipif(not list(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1")),
                                    reason="needs libfaketime (apt-get install faketime)")


@functools.lru_cache(maxsize=None)
def sample(count: int, grammar: Grammar = Grammar(), seed_: int = 11) -> tuple[Case, ...]:
    return tuple(generate(seed_, index, grammar) for index in range(count))


def text_of(found: tuple[Case, ...]) -> str:
    """All SQL, parameters and request flags of the cases, as one string."""
    return "\n".join(json.dumps(c.to_json("k_"), ensure_ascii=False) for c in found)


# == the generator ==============================================================================
SOURCES = {
    "random()": r"random\(\)",
    "randomblob with a literal length": r"randomblob\(-?\d+\)",
    "randomblob with a computed length": r"randomblob\((?!-?\d+\))",
    "randomblob with a bound length": r"randomblob\([?:]",
    "'now' single-quoted": r"\('now'",
    "'now' double-quoted": r'\(\\"now\\"',
    "'n'||'ow'": r"'n'\|\|'ow'",
    "lower('NOW')": r"lower\('NOW'\)",
    "'now' as a bound parameter": r'"now"\]|"now",|: "now"',
    "named parameters": r'\{"p0": ',
    "'localtime'": r"'localtime'",
    "'utc'": r"'utc'",
    "unixepoch('subsec')": r"unixepoch\('subsec'\)",
    "datetime/date/time/julianday/strftime": r"datetime\(.*date\(.*time\(.*julianday\(.*strftime\(",
    "a date function with no argument": r"(datetime|date|time|julianday|unixepoch)\(\)",
    "CURRENT_TIMESTAMP": r"CURRENT_TIMESTAMP",
    "CURRENT_DATE": r"CURRENT_DATE",
    "CURRENT_TIME (alone)": r"CURRENT_TIME\b",
    "a DEFAULT that reads the clock": r"DEFAULT (CURRENT_|\(datetime|\(julianday|\(unixepoch|\(strftime)",
    "a DEFAULT that draws randomness": r"DEFAULT \((random|randomblob|hex\(randomblob|abs\(random)",
    "AFTER INSERT trigger": r"AFTER INSERT ON",
    "AFTER UPDATE trigger": r"AFTER UPDATE (OF \w+ )?ON",
    "a trigger writing another table": r"BEGIN [^\"]*INSERT INTO k_t\d",
    "a view": r"CREATE VIEW IF NOT EXISTS k_v",
    "INSERT ... SELECT from a view": r"SELECT a0[^\"]* FROM k_v",
    "INSERT ... SELECT ... ORDER BY random() LIMIT k":
        r"INSERT INTO k_\w+\([^)]*\) SELECT .* ORDER BY random\(\) LIMIT \d",
    "UPDATE": r"UPDATE k_",
    "DELETE": r"DELETE FROM k_",
    "CREATE TABLE ... AS SELECT": r"CREATE TABLE IF NOT EXISTS k_x\d+ AS SELECT",
    "?transaction": r"\"transaction",
    "?norwrandom": r"norwrandom",
    "?norwtime": r"norwtime",
    "through a follower": r"\"via\": [12]",
    "temp objects": r"temp\.k_",
    "total_changes()": r"total_changes\(\)",
    "pragma_database_list": r"pragma_database_list",
}


def test_the_generator_reaches_every_source_of_time_and_randomness():
    text = text_of(sample(100))
    missing = [name for name, pattern in SOURCES.items() if not re.search(pattern, text)]
    assert not missing, f"never generated: {missing}"


def test_without_sources_nothing_reads_the_clock_or_the_random_generator():
    found = sample(100, Grammar(sources=False, escapes=False))
    sql = "\n".join(s.sql for c in found for r in c.schema + c.requests for s in r.statements)
    sql = re.sub(r"'(now|NOW|localtime)'", "''", sql)  # plain text values, never a time value here
    for word in ("random", "now", "NOW", "CURRENT_", "date", "time", "julianday(", "strftime(", "temp.",
                 "total_changes", "pragma"):
        assert word not in sql, word
    assert "INSERT INTO §t" in sql and "UPDATE §" in sql and "CREATE TRIGGER" in sql


def run_on_sqlite(case: Case) -> tuple[int, int]:
    """(statements, failed) when the case runs on one in-memory SQLite database."""
    db = apsw.Connection(":memory:")
    statements = failed = 0
    for request in case.schema + case.requests:
        for stmt in request.statements:
            body = stmt.body("k_")
            sql, params = (body, None) if isinstance(body, str) else (body[0], body[1] if isinstance(body[1], dict)
                                                                      else body[1:])
            statements += 1
            try:
                list(db.execute(sql, params))  # type: ignore[arg-type]
            except apsw.Error:
                failed += 1
    return statements, failed


def test_generated_sql_is_mostly_accepted_so_that_tables_evolve():
    totals = [run_on_sqlite(case) for case in sample(100)]  # the same cases as above
    statements, failed = sum(t[0] for t in totals), sum(t[1] for t in totals)
    assert statements > 1000
    assert failed / statements < 0.08, f"{failed} of {statements} statements failed"


def test_the_same_seed_gives_the_same_cases_whatever_modules_are_loaded():
    """Each case is reproducible alone (`--only-case`), and hypothesis would mix in literals
    from every loaded local module; generate() keeps them out, so the CLI (which loads
    zraft.cli) and the tests draw the same cases."""
    here = text_of(sample(20, seed_=5))
    assert here == text_of(sample.__wrapped__(20, seed_=5))
    assert here != text_of(sample(20, seed_=6))
    assert text_of((generate(5, 13),)) == text_of(sample(20, seed_=5)[13:14])
    assert len(set(text_of((c,)) for c in sample(20, seed_=5))) == 20
    script = ("import json, sys, zraft.cli\n"
              "from zraft.chaos.divergence import generate\n"
              "out = [generate(5, i) for i in range(20)]\n"
              "print(chr(10).join(json.dumps(c.to_json('k_'), ensure_ascii=False) for c in out))\n")
    there = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert there == here


def test_a_saved_case_reads_back_as_it_was_written():
    for case in sample(20):
        saved = json.loads(json.dumps(case.to_json("c7_")))
        assert Case.from_json(saved).to_json("ignored") == case.to_json("c7_")


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), phases=(Phase.generate,))
@seed(3)
@given(cases())
def test_parameters_match_their_placeholders(case: Case):
    for request in case.schema + case.requests:
        for stmt in request.statements:
            assert not (stmt.positional and stmt.named)
            if stmt.named:
                assert sorted(re.findall(r":p\d+", stmt.sql)) == sorted(f":{k}" for k, _ in stmt.named)


# == the comparison =============================================================================
def test_the_comparison_tells_types_and_absent_tables_apart():
    rows = {"t": [[1, "integer", "1"], [2, "text", "61FF"]], "sqlite_schema": []}  # TEXT is read as hex
    assert compare(0, {1: rows, 2: json.loads(json.dumps(rows)), 3: rows}) == (2, [])
    for other in ([1, "real", "1.0"], [1, "text", "'1'"], [1, "blob", "X'31'"], [1, "null", "NULL"]):
        changed = {"t": [other, rows["t"][1]], "sqlite_schema": []}
        tables, found = compare(4, {1: rows, 2: rows, 3: changed})
        assert tables == 2 and [d.table for d in found] == ["t"]
        assert found[0].groups == [([1, 2], 2, digest(rows["t"])), ([3], 2, digest(changed["t"]))]
        assert found[0].samples and found[0].samples[0].startswith("rowid 1: node1 (1)")
    _, found = compare(6, {1: rows, 2: rows, 3: {"t": [rows["t"][0], [2, "text", "62"]], "sqlite_schema": []}})
    assert found[0].samples == ["rowid 2: node1 ('a\\xff') | node2 ('a\\xff') | node3 ('b')"]
    _, found = compare(5, {1: rows, 2: {"t": [], "sqlite_schema": []}, 3: {"sqlite_schema": []}})
    assert [(g[0], g[2]) for g in found[0].groups][2] == ([3], "absent")
    assert "DIVERGENCE in t (case 5)" in found[0].describe()[0]


def test_each_program_gets_its_own_environment():
    conf = "[program:node1-store]\ncommand=python -m zraft run store\npriority=10\n\n[program:node1-api]\ncommand=x\n"
    out = with_environment(conf, {"node1-store": {"TZ": "YST-5:45", "P": "50%"}})
    assert 'command=python -m zraft run store\nenvironment=TZ="YST-5:45",P="50%%"\npriority=10' in out
    assert out.count("environment=") == 1


# == on a cluster ===============================================================================
def smoke(tmp_path: Path, **overrides: object) -> tuple[DivergeOptions, Summary, list[str]]:
    base: dict[str, object] = dict(cases=5, per_cluster=5, seed=20240601, out=tmp_path / "diverge", kill_rate=1.0,
                                   zones=("UTC0", "XST5", "YST-5:45"))
    base.update(overrides)
    options = DivergeOptions(**base)  # type: ignore[arg-type]
    lines: list[str] = []
    summary = run(options, lines.append)
    print("\n".join(lines))
    return options, summary, lines


def _evidence(lines: list[str]) -> None:
    """The clocks and zones really differ: each node's /status clock and the store's TZ."""
    assert any("node2: clock +3600 s" in line and "TZ=XST5" in line and "faketime on" in line for line in lines), lines
    assert any("node3: clock -7200 s" in line and "TZ=YST-5:45" in line for line in lines), lines


@pytest.mark.integration
@needs_faketime
def test_a_control_without_time_or_randomness_finds_no_divergence(tmp_path):
    """Kills, clocks and zones but nothing nondeterministic in the SQL: the harness itself
    (settling, reading, hashing) and the store's replay after kill -9 make no difference."""
    _, summary, lines = smoke(tmp_path, cases=4, per_cluster=4, grammar=Grammar(sources=False, escapes=False))
    _evidence(lines)
    assert summary.passed, summary.last_line()
    assert summary.cases == 4 and summary.kills >= 4
    assert sum(r.confirmed_kills for r in summary.results) >= 4, "stores killed and restarted"
    assert summary.tables > 10 and summary.statements > 20


@pytest.mark.integration
@needs_faketime
def test_the_deterministic_apply_gives_every_node_the_same_tables(tmp_path):
    options, summary, lines = smoke(tmp_path)
    _evidence(lines)
    assert summary.cases == options.cases and not summary.all_problems, summary.all_problems
    assert sum(r.confirmed_kills for r in summary.results) >= options.cases
    assert not summary.divergences, "\n".join(line for d in summary.divergences for line in d.describe())
    assert summary.last_line().startswith(f"{options.cases} cases, ") and " 0 divergences" in summary.last_line()


@pytest.mark.integration
@needs_faketime
def test_with_the_deterministic_apply_switched_off_it_finds_a_divergence(tmp_path):
    """The same run, with ZRAFT_TEST_NONDETERMINISTIC_APPLY=1 in the stores' environment."""
    options, summary, lines = smoke(tmp_path, nondeterministic_apply=True, stop_after=1)
    assert any("ZRAFT_TEST_NONDETERMINISTIC_APPLY=1" in line for line in lines), "the switch reached the stores"
    assert summary.divergences, summary.last_line()
    divergent = next(r for r in summary.results if r.divergences)
    case_file = options.out / f"case-{divergent.index:04d}.json"
    assert json.loads(case_file.read_text())["divergences"], "the statements to replay are kept"
    assert any(f"--seed {options.seed} --only-case {divergent.index} --nondeterministic-apply" in line
               for line in lines)
    assert (options.out / "cluster-0" / "node1" / "store.log").exists(), "the cluster's logs are kept"
    shutil.rmtree(options.out / "cluster-0", ignore_errors=True)
