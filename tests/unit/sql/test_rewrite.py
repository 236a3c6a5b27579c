"""zraft.sql.rewrite: every non-deterministic construct becomes a literal, nothing else moves.

SQLite is the oracle throughout: a rewritten statement run on a plain database must give what
the original gives on a database whose clock (a test VFS) is pinned to the rewrite's instant.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.sql.support import CLOCK_MS, CLOCK_NS, CLOCK_SUBSEC, fixed_clock, one_row, seeded
from zraft.sql import lexer
from zraft.sql.rewrite import MAX_RANDOMBLOB_BYTES, RewriteError, explain_rewrite, rewrite

JD = repr((CLOCK_MS + 210_866_760_000_000) / 86_400_000)    # 2460263.4259273494
ISO = "'2023-11-14 22:13:20.123Z'"
INT = r"(?:\d+|\(-\d+\))"                                     # a rewritten RANDOM()
R = "§"                                                      # stands for INT in expected texts
Connect = Callable[[int], apsw.Connection]


def like(expected: str, actual: str) -> bool:
    """Does `actual` equal `expected`, with each § standing for any rewritten RANDOM()?"""
    return re.fullmatch(re.escape(expected).replace(R, INT), actual) is not None


def rw(sql: str, **kw: Any) -> str:
    """rewrite() with a seeded generator and the fixed clock."""
    return rewrite(sql, rng=kw.pop("rng", seeded()), now=kw.pop("now", fixed_clock), **kw)


class StubRandom:
    """A random source whose next 64 bits we choose."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def getrandbits(self, k: int, /) -> int:
        return self.bits

    def randbytes(self, n: int, /) -> bytes:
        return bytes(range(n))


# == RANDOM() / RANDOMBLOB() ==================================================================
def test_random_becomes_the_generators_next_int64() -> None:
    expected = seeded().getrandbits(64)
    expected -= (1 << 64) if expected >= 1 << 63 else 0
    literal = str(expected) if expected >= 0 else f"({expected})"
    assert rw("INSERT INTO foo(v) VALUES(RANDOM())") == f"INSERT INTO foo(v) VALUES({literal})"


@pytest.mark.parametrize(("bits", "value"), [
    (0, 0), (1, 1), ((1 << 63) - 1, (1 << 63) - 1), (1 << 63, -(1 << 63)), ((1 << 64) - 1, -1),
])
def test_random_covers_the_signed_64_bit_range_and_sqlite_reads_it_back(bits: int, value: int) -> None:
    out = rewrite("SELECT random(), typeof(random())", rng=StubRandom(bits))
    assert one_row(out) == (value, "integer")


@pytest.mark.parametrize(("arg", "size"), [
    ("16", 16), ("1", 1), ("0", 1), ("-5", 1), ("+3", 3), ("2.9", 2), ("0x10", 16), ("1_000", 1000),
    ("1e1", 10), (" 4 ", 4),
])
def test_randomblob_of_a_numeric_literal_becomes_a_blob_of_max_n_1_bytes(arg: str, size: int) -> None:
    out = rw(f"SELECT randomblob({arg})")
    match = re.fullmatch(r"SELECT x'([0-9A-F]*)' *", out)      # inner spacing is kept
    assert match and len(match.group(1)) == 2 * size, out
    assert one_row(out) == (bytes.fromhex(match.group(1)),)


@pytest.mark.parametrize("sql", [
    "SELECT randomblob(n) FROM t", "SELECT randomblob(?)", "SELECT randomblob('16')",
    "SELECT randomblob(2+2)", "SELECT randomblob()", "SELECT randomblob(1, 2)", "SELECT random(1)",
    "SELECT randomblob(:n)",
])
def test_calls_whose_result_cannot_be_inlined_keep_their_text(sql: str) -> None:
    assert rw(sql) == sql


def test_a_randomblob_too_large_to_inline_is_refused() -> None:
    assert rw(f"SELECT randomblob({MAX_RANDOMBLOB_BYTES})").startswith("SELECT x'")
    with pytest.raises(RewriteError, match="randomblob"):
        rw(f"SELECT randomblob({MAX_RANDOMBLOB_BYTES + 1})")
    with pytest.raises(RewriteError):
        rw("SELECT randomblob(1e400)")


def test_literals_never_fuse_with_their_neighbours() -> None:
    out = rewrite("SELECT random()AS r, 5-random(), -random(), randomblob(2)AS b, current_date'd'",
                  rng=StubRandom((1 << 64) - 1))
    assert one_row(out)[:3] == (-1, 6, 1)
    names = [c[0] for c in apsw.Connection(":memory:").execute(out).description]
    assert [names[0], names[3], names[4]] == ["r", "b", "d"]


# == ORDER BY =================================================================================
@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t ORDER BY random()", "SELECT * FROM t ORDER BY random()"),
    ("SELECT * FROM t ORDER BY RANDOM() LIMIT 1", "SELECT * FROM t ORDER BY RANDOM() LIMIT 1"),
    ("SELECT * FROM t ORDER BY a, (random() % 5) DESC", "SELECT * FROM t ORDER BY a, (random() % 5) DESC"),
    ("SELECT * FROM t ORDER BY (SELECT random())", "SELECT * FROM t ORDER BY (SELECT random())"),
    ("INSERT INTO t SELECT random(), x FROM s ORDER BY random()",
     "INSERT INTO t SELECT §, x FROM s ORDER BY random()"),
    ("INSERT INTO t SELECT (SELECT random() FROM u ORDER BY random()), random() FROM s",
     "INSERT INTO t SELECT (SELECT § FROM u ORDER BY random()), § FROM s"),
    ("SELECT * FROM (SELECT random() AS r FROM t ORDER BY random()) ORDER BY r, random()",
     "SELECT * FROM (SELECT § AS r FROM t ORDER BY random()) ORDER BY r, random()"),
    ("SELECT * FROM t ORDER BY x LIMIT abs(random()) % 3 OFFSET random()",
     "SELECT * FROM t ORDER BY x LIMIT abs(§) % 3 OFFSET §"),
    ("SELECT row_number() OVER (ORDER BY random()), random() FROM t",
     "SELECT row_number() OVER (ORDER BY random()), § FROM t"),
    ("SELECT sum(a) OVER (PARTITION BY b ORDER BY random() ROWS 2 PRECEDING), random() FROM t",
     "SELECT sum(a) OVER (PARTITION BY b ORDER BY random() ROWS 2 PRECEDING), § FROM t"),
    ("SELECT group_concat(a ORDER BY random()), random() FROM t",
     "SELECT group_concat(a ORDER BY random()), § FROM t"),
    ("SELECT * FROM t ORDER BY a, rows, random()", "SELECT * FROM t ORDER BY a, rows, random()"),
    ("WITH c AS (SELECT a FROM t ORDER BY random()) SELECT random() FROM c",
     "WITH c AS (SELECT a FROM t ORDER BY random()) SELECT § FROM c"),
    ("INSERT INTO t SELECT a FROM s ORDER BY random() ON CONFLICT(a) DO UPDATE SET b=random()",
     "INSERT INTO t SELECT a FROM s ORDER BY random() ON CONFLICT(a) DO UPDATE SET b=§"),
    ("UPDATE t SET a=random() WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 1)",
     "UPDATE t SET a=§ WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 1)"),
    ("SELECT * FROM t ORDER BY datetime('now')", f"SELECT * FROM t ORDER BY datetime({JD})"),
])
def test_random_inside_order_by_is_kept_everywhere_else_rewritten(sql: str, expected: str) -> None:
    assert like(expected, rw(sql)), rw(sql)


# == 'now' ====================================================================================
@pytest.mark.parametrize("fn", ["date", "time", "datetime", "julianday", "unixepoch"])
@pytest.mark.parametrize("now", ["'now'", "'NOW'", "'Now'", "now", "NOW"])
def test_now_as_first_argument_becomes_a_julian_day(fn: str, now: str) -> None:
    assert rw(f"SELECT {fn}({now})") == f"SELECT {fn}({JD})"
    upper = fn.upper()
    assert rw(f"SELECT {upper}({now}, '+1 day', 'subsec')") == f"SELECT {upper}({JD}, '+1 day', 'subsec')"


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT strftime('%Y', 'now')", f"SELECT strftime('%Y', {JD})"),
    ("SELECT strftime('%s','now','start of day')", f"SELECT strftime('%s',{JD},'start of day')"),
    ("SELECT strftime('now', '2020-01-01')", "SELECT strftime('now', '2020-01-01')"),
    ("SELECT timediff('now', '2020-01-01')", f"SELECT timediff({JD}, '2020-01-01')"),
    ("SELECT timediff('2020-01-01', now)", f"SELECT timediff('2020-01-01', {JD})"),
    ("SELECT timediff('now','now')", f"SELECT timediff({JD},{JD})"),
    ("SELECT date(), datetime( ), julianday(/* c */)",
     f"SELECT date({JD}), datetime({JD} ), julianday({JD}/* c */)"),
    ("SELECT strftime('%f')", f"SELECT strftime('%f', {JD})"),
    ("SELECT datetime('now', 'utc')", f"SELECT datetime({ISO}, 'utc')"),
    ("SELECT datetime('now', 'UnixEpoch')", f"SELECT datetime({ISO}, 'UnixEpoch')"),
    ("SELECT datetime('now', ?)", f"SELECT datetime({ISO}, ?)"),
    ("SELECT strftime('%s', 'now', lower('UTC'))", f"SELECT strftime('%s', {ISO}, lower('UTC'))"),
    ('SELECT "datetime"(\'now\')', f'SELECT "datetime"({JD})'),
])
def test_now_in_other_positions(sql: str, expected: str) -> None:
    assert rw(sql) == expected


@pytest.mark.parametrize("sql", [
    "SELECT datetime('now' || '')", "SELECT datetime(:now)", "SELECT datetime($now)", "SELECT datetime(@now)",
    "SELECT datetime('now ')", "SELECT datetime('2020-01-01', 'now')", "SELECT t.datetime('now')",
    "SELECT datetime(\"now\")", "SELECT now FROM t", "SELECT lower('now')", "SELECT datetime(t.now)",
])
def test_now_that_is_not_exactly_the_time_argument_is_kept(sql: str) -> None:
    assert rw(sql) == sql


# == CURRENT_TIMESTAMP / CURRENT_DATE / CURRENT_TIME ===========================================
def test_current_keywords_become_sqlites_own_strings(sqlite_at: Connect) -> None:
    sql = "SELECT CURRENT_TIMESTAMP, current_date, Current_Time, CURRENT_TIMESTAMP = datetime('now')"
    out = rw(sql)
    assert out == ("SELECT '2023-11-14 22:13:20', '2023-11-14', '22:13:20', "
                   f"'2023-11-14 22:13:20' = datetime({JD})")
    expected = ("2023-11-14 22:13:20", "2023-11-14", "22:13:20", 1)
    assert one_row(out) == one_row(sql, sqlite_at(CLOCK_MS)) == expected


@pytest.mark.parametrize("sql", [
    "SELECT t.current_date FROM t", "SELECT 1 AS current_time", "SELECT 1 current_date",
    "SELECT * FROM current_timestamp", 'SELECT "current_date"', "UPDATE t SET current_date = 1",
])
def test_current_keywords_used_as_names_are_kept(sql: str) -> None:
    assert rw(sql) == sql


# == one instant per call ======================================================================
def test_every_now_of_a_call_shares_one_clock_reading() -> None:
    readings: list[int] = []

    def ticking() -> int:
        readings.append(CLOCK_NS + len(readings) * 10**9)
        return readings[-1]

    out = rewrite("INSERT INTO a VALUES(datetime('now'), julianday(now), CURRENT_TIMESTAMP, date());"
                  "INSERT INTO b VALUES(time('now'), strftime('%s'))", now=ticking)
    assert len(readings) == 1
    assert out.count(JD) == 5 and "'2023-11-14 22:13:20'" in out


def test_nothing_to_rewrite_reads_no_clock_draws_no_randomness_and_skips_the_lexer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> Any:
        raise AssertionError("must not be called")

    monkeypatch.setattr("zraft.sql.rewrite.tokenize", boom)
    for sql in ["INSERT INTO users(id, name) VALUES(1, 'alice')", "UPDATE t SET updated=? WHERE id=1",
                "SELECT datetime(created), date(x) FROM t"]:
        assert rewrite(sql, rng=boom, now=boom) is sql  # type: ignore[arg-type]
    monkeypatch.undo()
    sql = "SELECT 'random()', \"now\", [current_time] -- random()"
    assert rewrite(sql, rng=boom, now=boom) == sql  # type: ignore[arg-type]


def test_flags_switch_off_each_family() -> None:
    sql = "SELECT random(), randomblob(2), datetime('now'), CURRENT_DATE, date()"
    no_random = f"SELECT random(), randomblob(2), datetime({JD}), '2023-11-14', date({JD})"
    assert rw(sql, random=False) == no_random
    no_time = "SELECT 2, x'0001', datetime('now'), CURRENT_DATE, date()"
    assert rw(sql, time=False, rng=StubRandom(2)) == no_time
    assert rw(sql, random=False, time=False) == sql


# == untouched text ============================================================================
UNTOUCHED = [
    "SELECT 'random()'", "SELECT 'now'", "SELECT 'NOW', 'current_timestamp'", "SELECT 'it''s random()'",
    "SELECT 'C:\\', 'x' -- random()", 'SELECT "random()" FROM t', 'SELECT "random" FROM t',
    "SELECT [random()] FROM t", "SELECT `random()` FROM t", "SELECT [now] FROM [now]",
    'SELECT * FROM "now"', 'CREATE TABLE "now"(random, "current_date")', "SELECT random FROM t",
    "SELECT t.random FROM t", "SELECT random_value() FROM t", "SELECT myrandom() FROM t",
    "SELECT x'72616E646F6D28292C6E6F77' FROM t", "SELECT 1 -- random(), datetime('now')",
    "SELECT 1 /* random() CURRENT_TIMESTAMP */", "SELECT 1 /* unterminated random()",
    "SELECT :random, @now, $current_date", "SELECT random_id, now_ms, current_x FROM t",
    "SELECT 'random(' || ')' FROM t", "SELECT \"a\"\"random()\" FROM t", "SELECT 1random()",
    "INSERT INTO t(random, now) VALUES(1, 2)", "SELECT 'unterminated random()",
    'SELECT "unterminated random()', "SELECT [unterminated random()",
    "CREATE TABLE t(a DEFAULT CURRENT_TIMESTAMP, b DEFAULT (datetime('now')), c DEFAULT (random()))",
    "CREATE VIEW v AS SELECT random(), datetime('now')",
    "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES(random(), CURRENT_TIME); END",
    "CREATE INDEX i ON t(a) WHERE b > datetime('now')",
    "ALTER TABLE t ADD COLUMN c DEFAULT CURRENT_TIMESTAMP",
]


@pytest.mark.parametrize("sql", UNTOUCHED)
def test_strings_identifiers_comments_blobs_and_schema_text_are_kept(sql: str) -> None:
    assert rw(sql) == sql


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT 'random()', random(), \"random()\"", "SELECT 'random()', §, \"random()\""),
    ("SELECT [now], datetime(now), 'now' -- now\n", f"SELECT [now], datetime({JD}), 'now' -- now\n"),
    ("SELECT random /* keep */ ( -- me\n)", "SELECT § /* keep */  -- me\n"),
    ("SELECT \"random\"(), [random]()", "SELECT §, §"),
    ("  sElEcT   RaNdOm()  ,\n\tDateTime( 'NoW' )  ", f"  sElEcT   §  ,\n\tDateTime( {JD} )  "),
])
def test_only_the_construct_changes(sql: str, expected: str) -> None:
    assert like(expected, rw(sql)), rw(sql)


# == statements ================================================================================
def test_multi_statement_strings_and_schema_statements() -> None:
    sql = ("CREATE TABLE t(a, b DEFAULT CURRENT_TIMESTAMP); "
           "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = CASE WHEN 1 THEN random() END; END; "
           "INSERT INTO t(a) VALUES(random()); CREATE TABLE u AS SELECT random() AS r, datetime('now') AS d")
    out = rw(sql)
    head = sql[:sql.index("INSERT INTO t(a)")]
    assert out.startswith(head)
    assert re.fullmatch(re.escape(head) + rf"INSERT INTO t\(a\) VALUES\({INT}\); "
                        rf"CREATE TABLE u AS SELECT {INT} AS r, datetime\({JD}\) AS d", out), out
    conn = apsw.Connection(":memory:")
    conn.execute(out)
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(1,)]


def test_explain_statements_are_rewritten() -> None:
    assert re.fullmatch(f"EXPLAIN QUERY PLAN SELECT {INT}", rw("EXPLAIN QUERY PLAN SELECT random()"))


# == precision and SQLite equivalence ==========================================================
TIME_EXPRESSIONS = [
    "datetime('now','subsec')", "julianday('now')", "unixepoch('now','subsec')",
    "strftime('%Y-%m-%d %H:%M:%f','now')", "strftime('%s','now')", "time('now','subsec')", "date('now')",
    "timediff('now','2000-01-01 00:00:00')", "timediff('2000-01-01', 'now')",
    "datetime('now','utc','subsec')",
    "datetime('now','unixepoch')", "datetime('now','julianday')", "datetime('now','auto','subsec')",
    "datetime('now','start of month','+1 day','subsec')", "datetime('now','localtime','subsec')",
    "datetime()", "julianday()", "strftime('%f')", "unixepoch()", "CURRENT_TIMESTAMP", "CURRENT_DATE",
    "CURRENT_TIME", "datetime('now', 'utc', 'localtime', 'subsec')",
]


@pytest.fixture(params=["UTC", "America/New_York", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run under a host time zone: 'utc'/'localtime' must still agree with SQLite."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def test_rewritten_time_expressions_equal_sqlites_own_now(sqlite_at: Connect, local_zone: str) -> None:
    sql = "SELECT " + ", ".join(TIME_EXPRESSIONS)
    assert one_row(rw(sql)) == one_row(sql, sqlite_at(CLOCK_MS))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(unix_ms=st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))   # years 1-9999
def test_julian_day_literal_keeps_the_millisecond(unix_ms: int, sqlite_at: Connect) -> None:
    sql = "SELECT datetime('now','subsec'), julianday('now'), strftime('%Y-%m-%d %H:%M:%f', 'now', 'utc')"
    out = rewrite(sql, now=lambda: unix_ms * 1_000_000 + 999_999)
    assert one_row(out) == one_row(sql, sqlite_at(unix_ms))


def test_subsec_literal_matches_the_expected_utc_string() -> None:
    out = rw("SELECT datetime('now', 'subsec'), datetime(now), CURRENT_TIMESTAMP")
    assert one_row(out) == (CLOCK_SUBSEC, CLOCK_SUBSEC[:19], CLOCK_SUBSEC[:19])


# == properties ================================================================================
_TRICKY = st.sampled_from(["random()", "RANDOM()", "randomblob(4)", "now", "'now'", "current_timestamp",
                           "--", "/*", "*/", "'", "''", '"', "[", "]", "`", ";", "\\", "order by", "\n",
                           "datetime('now')", "x'00'", "é", "\u2028"])
_TEXT = st.lists(st.one_of(_TRICKY, st.text(alphabet=st.characters(blacklist_categories=["Cs"],
                                                                    blacklist_characters="\x00"),
                                             max_size=8)), max_size=8).map("".join)
_TEMPLATES = [                                     # (template, result columns holding the literal)
    ("SELECT {lit}, random(), {lit}", [(0, 2)]),
    ("SELECT datetime('now', {lit}), {lit} || randomblob(2), CURRENT_TIME", [()]),
    ("SELECT {lit} FROM (SELECT random() AS r) ORDER BY random(), {lit}", [(0,)]),
    ("SELECT CURRENT_DATE, {lit}", [(1,)]),
    ("SELECT strftime({lit}, 'now'), {lit}; SELECT {lit}, date()", [(1,), (0,)]),
]


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, template=st.sampled_from(_TEMPLATES))
def test_any_string_literal_survives_verbatim(text: str, template: tuple[str, list[tuple[int, ...]]]) -> None:
    shape, columns = template
    lit = _sql_string(text)
    out = rw(shape.format(lit=lit))
    assert out.count(lit) >= shape.count("{lit}")
    rows = apsw.Connection(":memory:").execute(out).fetchall()
    assert len(rows) == len(columns)
    for row, cols in zip(rows, columns):
        assert all(row[c] == text for c in cols)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, quote=st.sampled_from(['""', "``", "[]", "--", "/**/"]))
def test_any_quoted_identifier_or_comment_survives_verbatim(text: str, quote: str) -> None:
    if quote in ('""', "``"):
        wrapped = quote[0] + text.replace(quote[0], quote) + quote[0]
    elif quote == "[]":
        wrapped = "[" + text.replace("]", "") + "]"
    elif quote == "--":
        wrapped = "--" + text.replace("\n", "") + "\n"
    else:
        wrapped = "/*" + text.replace("*/", "") + "*/"
    sql = f"SELECT random() AS {wrapped if quote[0] not in '-/' else 'x ' + wrapped}, datetime('now')"
    out = rw(sql)
    assert wrapped in out
    assert re.fullmatch(rf"SELECT {INT} AS .*, datetime\({JD}\)", out, re.S)


_EXPRS = st.sampled_from([
    "random()", "RANDOM ( )", "randomblob(3)", "randomblob(-1)", "datetime('now')", "date(now)",
    "julianday()", "strftime('%s')", "strftime('%f', 'now', 'subsec')", "timediff('now', a)",
    "datetime('now', 'utc')", "CURRENT_TIMESTAMP", "current_date", "a", "'now'", "x'0A'", "1.5", "-1",
    "\"random()\"", "(SELECT random() ORDER BY random())", "abs(random())", "-random()",
])
_OPS = st.sampled_from([" + ", "-", " || ", " = ", "*", " AND ", ", "])


@st.composite
def _statements(draw: st.DrawFn) -> str:
    parts = [draw(_EXPRS)]
    for _ in range(draw(st.integers(0, 4))):
        op = draw(_OPS)
        parts += [op, draw(_EXPRS)]
    expr = "".join(parts)
    shape = draw(st.sampled_from([
        "SELECT {e} FROM t", "SELECT {e} FROM t ORDER BY {e}", "INSERT INTO t(a) SELECT {e} FROM t",
        "UPDATE t SET a = ({e}) WHERE a = {e}", "SELECT {e} FROM t ORDER BY a LIMIT 1 OFFSET 0",
        "DELETE FROM t WHERE a IN (SELECT {e} FROM t ORDER BY {e})",
    ]))
    return shape.replace("{e}", expr)


@settings(max_examples=300, deadline=None)
@given(sql=_statements())
def test_rewritten_statements_still_prepare(sql: str) -> None:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t(a)")
    try:
        conn.execute(sql, explain=2).fetchall()
    except apsw.SQLError:
        return                                  # the original is not valid here: nothing to keep
    out = rw(sql)
    conn.execute(out, explain=2).fetchall()
    assert rw(out) == out                       # idempotent: nothing non-deterministic is left


# == determinism ===============================================================================
def test_one_rewrite_applied_on_three_databases_gives_identical_rows() -> None:
    sql = "INSERT INTO t VALUES(random(), randomblob(8), datetime('now','subsec'), CURRENT_TIMESTAMP)"
    replicated = rewrite(sql)                        # the real clock and the real generator
    rows = []
    for _ in range(3):
        conn = apsw.Connection(":memory:")
        conn.execute("CREATE TABLE t(a, b, c, d)")
        conn.execute(replicated)
        rows.append(conn.execute("SELECT * FROM t").fetchall())
    assert rows[0] == rows[1] == rows[2]
    value, blob = rows[0][0][:2]
    assert isinstance(value, int) and isinstance(blob, bytes) and len(blob) == 8
    unrewritten = []
    for _ in range(3):
        conn = apsw.Connection(":memory:")
        conn.execute("CREATE TABLE t(a, b, c, d)")
        conn.execute(sql)
        unrewritten.append(conn.execute("SELECT a, b FROM t").fetchall())
    assert len({repr(r) for r in unrewritten}) == 3      # what the rewrite protects against


# == /db/sql ===================================================================================
def test_explain_rewrite_shapes() -> None:
    ok = explain_rewrite("INSERT INTO foo(v) VALUES(RANDOM())", rng=StubRandom(7))
    assert ok == {"original": "INSERT INTO foo(v) VALUES(RANDOM())",
                  "rewritten": "INSERT INTO foo(v) VALUES(7)"}
    assert explain_rewrite("SELECT 1") == {"original": "SELECT 1", "rewritten": "SELECT 1"}
    assert explain_rewrite("INSERT INTO nosuch VALUES(random())", random=False) == {
        "original": "INSERT INTO nosuch VALUES(random())", "rewritten": "INSERT INTO nosuch VALUES(random())"}
    timed = explain_rewrite("SELECT datetime('now')", now=fixed_clock)
    assert timed == {"original": "SELECT datetime('now')", "rewritten": f"SELECT datetime({JD})"}


@pytest.mark.parametrize(("sql", "message"), [
    ("SELEC random()", 'near "SELEC": syntax error'),
    ("SELECT 'unterminated", "unrecognized token"),
    ("SELECT (random()", "incomplete input"),
    ("INSERT INTO t VALUES(1); SELECT FROM", "syntax error"),
    (f"SELECT randomblob({MAX_RANDOMBLOB_BYTES * 2})", "randomblob"),
])
def test_explain_rewrite_reports_what_does_not_parse(sql: str, message: str) -> None:
    result = explain_rewrite(sql)
    assert set(result) == {"original", "error"} and result["original"] == sql
    assert message in result["error"]


def test_explain_rewrite_accepts_unknown_names_and_triggers() -> None:
    sql = ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END; "
           "SELECT nosuchfn(random()) FROM nosuch")
    result = explain_rewrite(sql, rng=StubRandom(3))
    assert result == {"original": sql, "rewritten": sql.replace("nosuchfn(random())", "nosuchfn(3)")}


# == the lexer =================================================================================
@settings(max_examples=200, deadline=None)
@given(text=_TEXT)
def test_lexer_only_drops_whitespace_and_comments(text: str) -> None:
    tokens = lexer.tokenize(text)
    pos = 0
    for _, tok_text, start in tokens:
        assert re.fullmatch(r"(?:[ \t\n\f\r\v]+|--[^\n]*|/\*[\s\S]*?(?:\*/|\Z))*", text[pos:start])
        assert text[start:start + len(tok_text)] == tok_text
        pos = start + len(tok_text)
    assert re.fullmatch(r"(?:[ \t\n\f\r\v]+|--[^\n]*|/\*[\s\S]*?(?:\*/|\Z))*", text[pos:])


def test_lexer_agrees_with_sqlite_on_odd_tokens() -> None:
    sql = "SELECT 'C:\\', [a b], `x`, x'0a', 1_000, $v::x(y), :now, ?3, \"a\"\"b\", 1e5, .5 /* c"
    kinds = [(k, t) for k, t, _ in lexer.tokenize(sql) if t != ","]
    assert kinds == [("ident", "SELECT"), ("string", "'C:\\'"), ("qident", "[a b]"), ("qident", "`x`"),
                     ("blob", "x'0a'"), ("number", "1_000"), ("variable", "$v::x(y)"), ("variable", ":now"),
                     ("variable", "?3"), ("qident", '"a""b"'), ("number", "1e5"), ("number", ".5")]


def test_statement_split_keeps_trigger_bodies_whole() -> None:
    sql = ("CREATE TRIGGER t1 AFTER INSERT ON t BEGIN SELECT CASE WHEN 1 THEN 2 END; SELECT 3; END; "
           "SELECT ';'; SELECT 4")
    tokens = lexer.tokenize(sql)
    texts = [sql[tokens[lo][2]:lexer.token_end(tokens[hi - 1])] for lo, hi in lexer.split_statements(tokens)]
    trigger = sql[:sql.index("3; END;") + len("3; END;")]
    assert texts == [trigger, "SELECT ';';", "SELECT 4"]
