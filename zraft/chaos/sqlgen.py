"""Random schemas and statements that reach every source of time and randomness SQLite has:
the generator half of `zraft diverge` (the runner is `divergence.py`; DESIGN.md says why).

A `Case` is a few tables (with DEFAULTs that read the clock or the random generator), a log
table, triggers that write other tables, views, and a list of requests for rqlite's
`/db/execute`: inserts, `INSERT ... SELECT ... ORDER BY random() LIMIT k`, inserts from views,
updates, deletes, `CREATE TABLE ... AS SELECT`, and (when `escapes` is on) the per-node escapes
the store must refuse: `temp.` objects, `total_changes()`, `pragma_database_list`.

Every way to reach 'now' is drawn: 'now' in single and double quotes and in capitals,
computed ('n'||'ow', lower('NOW'), char(110,111,119), a subquery, a column holding 'now'),
bound as a positional or named parameter, implied by a date function with no argument,
`unixepoch('subsec')`, `CURRENT_TIMESTAMP`/`CURRENT_DATE`/`CURRENT_TIME`, with the
'localtime', 'utc' and 'subsec' modifiers (also as parameters). Randomness: `random()`,
`randomblob(n)` with literal, computed and bound lengths, `ORDER BY random()`, and
random WHERE and WHEN conditions.

Generated SQL names the case's own objects with `PREFIX` in front (`§t0`); the runner
replaces it with the case's prefix, so every case on a long-lived cluster has tables of its
own. Nothing else in the text or the parameters contains `PREFIX`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

PREFIX = "§"
LOG_TABLE = "g0"

ParamValue = int | float | str | None


@dataclass(frozen=True)
class Stmt:
    """One statement of a request, with positional or named parameters (not both)."""

    sql: str
    positional: tuple[ParamValue, ...] = ()
    named: tuple[tuple[str, ParamValue], ...] = ()

    def body(self, prefix: str) -> str | list[object]:
        """The statement as an element of rqlite's JSON request body."""
        sql = self.sql.replace(PREFIX, prefix)
        if self.named:
            return [sql, dict(self.named)]
        if self.positional:
            return [sql, *self.positional]
        return sql


@dataclass(frozen=True)
class Request:
    """One POST to /db/execute."""

    statements: tuple[Stmt, ...]
    transaction: bool = False
    norwrandom: bool = False
    norwtime: bool = False
    via: int = 0
    """0: through the leader; 1 or 2: through that follower (in node order)."""

    def query_string(self) -> str:
        flags = [name for name, on in (("transaction", self.transaction), ("norwrandom", self.norwrandom),
                                       ("norwtime", self.norwtime)) if on]
        return "&".join(flags)


@dataclass(frozen=True)
class Case:
    schema: tuple[Request, ...]
    requests: tuple[Request, ...]

    @property
    def statements(self) -> int:
        return sum(len(r.statements) for r in self.schema + self.requests)

    def to_json(self, prefix: str) -> dict[str, object]:
        def request(r: Request) -> dict[str, object]:
            return {"query": r.query_string(), "via": r.via, "body": [s.body(prefix) for s in r.statements]}
        return {"schema": [request(r) for r in self.schema], "requests": [request(r) for r in self.requests]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Case:
        """The case `to_json` wrote (its names already carry their prefix)."""
        def stmt(element: Any) -> Stmt:
            if isinstance(element, str):
                return Stmt(element)
            if len(element) == 2 and isinstance(element[1], dict):
                return Stmt(element[0], named=tuple(element[1].items()))
            return Stmt(element[0], positional=tuple(element[1:]))

        def request(r: dict[str, Any]) -> Request:
            flags = set(str(r.get("query", "")).split("&"))
            return Request(tuple(stmt(e) for e in r["body"]), transaction="transaction" in flags,
                           norwrandom="norwrandom" in flags, norwtime="norwtime" in flags, via=int(r.get("via", 0)))
        return cls(tuple(request(r) for r in doc["schema"]), tuple(request(r) for r in doc["requests"]))


@dataclass(frozen=True)
class Grammar:
    """What the generator may draw besides ordinary deterministic SQL."""

    sources: bool = True
    """Time and randomness: 'now' in every spelling, CURRENT_*, random(), randomblob(),
    ORDER BY random(), random WHERE and WHEN conditions, DEFAULTs that use them. Without
    them every statement is deterministic by itself: a control for the harness."""
    escapes: bool = True
    """Per-node state the store must refuse: temp objects, total_changes(), pragma_database_list."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    pk: bool = False
    """An `id INTEGER PRIMARY KEY` column (a rowid alias that inserts may name)."""


@dataclass
class Ctx:
    """Where an expression is written: which columns it may name and whether it may bind
    parameters (not in triggers or views). DEFAULTs come from the fixed list DEFAULTS, since
    SQLite allows no columns, subqueries or parameters there."""

    columns: Sequence[str] = ()
    params: bool = True
    named: bool = False
    grammar: Grammar = Grammar()
    tables: Sequence[Table] = ()
    positional: list[ParamValue] = field(default_factory=list)
    named_values: list[tuple[str, ParamValue]] = field(default_factory=list)

    def bind(self, value: ParamValue) -> str:
        if self.named:
            name = f"p{len(self.named_values)}"
            self.named_values.append((name, value))
            return f":{name}"
        self.positional.append(value)
        return "?"

    def stmt(self, sql: str) -> Stmt:
        return Stmt(sql, tuple(self.positional), tuple(self.named_values))


# == expressions ================================================================================
NOW_SPELLINGS = ("'now'", '"now"', "'NOW'", "'Now'", "'n'||'ow'", "lower('NOW')", "trim('  now ')",
                 "char(110,111,119)", "substr('xnow',2)", "replace('nxw','x','o')")
MODIFIERS = ("'localtime'", "'utc'", "'subsec'", "'+1 hour'", "'-90 minutes'", "'start of day'",
             "'start of month'", "'weekday 3'", "'+0.5 seconds'", "'localtime','utc'")
PARAM_MODIFIERS = ("localtime", "utc", "subsec", "+3 hours", "start of year")
FORMATS = ("'%Y-%m-%d %H:%M:%f'", "'%s'", "'%J'", "'%H:%M:%S'", "'%j %w %u'", "'%f'", "'%Y-%m-%dT%H:%M'")
TEXTS = ("'a'", "'bb'", "'now'", "'NOW'", "'localtime'", "'2024-02-29 12:34:56'", "''", "'z\u00e9'",
         "'2000-01-01'")
DEFAULTS = ("0", "'x'", "NULL", "1.5", "CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME",
            "(datetime('now'))", "(datetime('now','localtime'))", "(julianday('now'))",
            "(unixepoch('subsec'))", "(strftime('%Y-%m-%d %H:%M:%f','now'))", "(random())",
            "(randomblob(8))", "(hex(randomblob(4)))", "(abs(random()) % 1000)", "(time('now','utc'))",
            "(date('now','localtime','start of day'))", "(datetime('now','subsec'))",
            "(lower(hex(randomblob(2))) || '-' || strftime('%s','now'))", "(datetime())",
            "(randomblob(abs(random()) % 9))", "(CURRENT_TIMESTAMP || '/' || random())")
TYPES = ("INTEGER", "REAL", "TEXT", "BLOB", "", "NUMERIC", "DATETIME")


def _literal(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(("int", "text", "real", "null")))
    if kind == "int":
        value = draw(st.integers(-1000, 10**6))
        return f"({value})" if value < 0 else str(value)
    if kind == "real":
        number = draw(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
        return f"({number!r})" if number < 0 or str(number).startswith("-") else repr(number)
    if kind == "null":
        return "NULL"
    return draw(st.sampled_from(TEXTS))


def _param_value(draw: st.DrawFn) -> ParamValue:
    return draw(st.one_of(st.integers(-100, 10**6), st.sampled_from(("now", "NOW", "a", "localtime", "")),
                          st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), st.none()))


def _now(draw: st.DrawFn, ctx: Ctx) -> str:
    """A time value that means 'now', or sometimes a column or a fixed date."""
    options = list(NOW_SPELLINGS) + ["CURRENT_TIMESTAMP", "'2024-02-29 12:34:56'"]
    if ctx.params:
        options += ["param", "param"]
    options.append("(SELECT 'now')")
    if ctx.columns:
        options.append("column")
    choice = draw(st.sampled_from(options))
    if choice == "param":
        return ctx.bind(draw(st.sampled_from(("now", "now", "NOW", "2024-01-01 00:00:00"))))
    if choice == "column":
        return draw(st.sampled_from(list(ctx.columns)))
    return choice


def _modifiers(draw: st.DrawFn, ctx: Ctx) -> str:
    out = []
    for _ in range(draw(st.integers(0, 2))):
        if ctx.params and draw(st.integers(0, 4)) == 4:
            out.append(ctx.bind(draw(st.sampled_from(PARAM_MODIFIERS))))
        else:
            out.append(draw(st.sampled_from(MODIFIERS)))
    return "".join(", " + m for m in out)


def time_expr(draw: st.DrawFn, ctx: Ctx) -> str:
    kind = draw(st.sampled_from(("datetime", "date", "time", "julianday", "unixepoch", "strftime",
                                 "timediff", "zero", "current", "subsec")))
    if kind == "current":
        return draw(st.sampled_from(("CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME")))
    if kind == "zero":
        return draw(st.sampled_from(("datetime()", "date()", "time()", "julianday()", "unixepoch()",
                                     "strftime('%s')", "strftime('%Y-%m-%d %H:%M:%f')")))
    if kind == "subsec":
        return draw(st.sampled_from(("unixepoch('subsec')", "unixepoch('now','subsec')",
                                     "datetime('now','subsec')", "time('subsec')")))
    value = _now(draw, ctx)
    if kind == "strftime":
        return f"strftime({draw(st.sampled_from(FORMATS))}, {value}{_modifiers(draw, ctx)})"
    if kind == "timediff":
        return draw(st.sampled_from((f"timediff({value}, '2020-01-01 00:00:00')",
                                     f"timediff('2030-06-15', {value})")))
    return f"{kind}({value}{_modifiers(draw, ctx)})"


def _length(draw: st.DrawFn, ctx: Ctx) -> str:
    """A randomblob() length: a literal, computed, bound, or read from the data."""
    options = ["literal", "literal", "(abs(random()) % 16)", "length('abcd')+1", "(1+2)", "(5-7)"]
    if ctx.params:
        options.append("param")
    if ctx.columns:
        options.append("column")
    if ctx.tables:
        options.append("count")
    choice = draw(st.sampled_from(options))
    if choice == "literal":
        return str(draw(st.integers(-1, 16)))
    if choice == "param":
        return ctx.bind(draw(st.integers(0, 12)))
    if choice == "column":
        return f"(length({draw(st.sampled_from(list(ctx.columns)))}) % 9)"
    if choice == "count":
        table = draw(st.sampled_from(list(ctx.tables)))
        return f"((SELECT count(*) FROM {PREFIX}{table.name}) % 11)"
    return choice


def random_expr(draw: st.DrawFn, ctx: Ctx) -> str:
    options = ["random()", "random()", "(random() % 1000)", "(abs(random()) % 97)", "blob", "blob", "hexblob",
               "(SELECT random())"]
    choice = draw(st.sampled_from(options))
    if choice == "blob":
        return f"randomblob({_length(draw, ctx)})"
    if choice == "hexblob":
        return f"hex(randomblob({_length(draw, ctx)}))"
    return choice


def escape_expr(draw: st.DrawFn, ctx: Ctx) -> str:
    """What differs between nodes without being time or randomness: the store must refuse it."""
    return draw(st.sampled_from(("total_changes()", "(SELECT file FROM pragma_database_list WHERE name = 'main')",
                                 "(SELECT count(*) FROM pragma_database_list)")))


def plain_expr(draw: st.DrawFn, ctx: Ctx) -> str:
    options = ["literal", "literal", "last_insert_rowid()", "changes()"]
    if ctx.columns:
        options += ["column", "column", "column"]
    if ctx.params:
        options.append("param")
    choice = draw(st.sampled_from(options))
    if choice == "literal":
        return _literal(draw)
    if choice == "column":
        return draw(st.sampled_from(list(ctx.columns)))
    if choice == "param":
        return ctx.bind(_param_value(draw))
    return choice


def expr(draw: st.DrawFn, ctx: Ctx, depth: int = 0) -> str:
    kinds = ["plain", "plain"]
    if ctx.grammar.sources:
        kinds += ["time", "time", "time", "random", "random"]
    if ctx.grammar.escapes:
        kinds.append("escape")
    if depth < 2:
        kinds += ["combo", "combo"]
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        return plain_expr(draw, ctx)
    if kind == "time":
        return time_expr(draw, ctx)
    if kind == "random":
        return random_expr(draw, ctx)
    if kind == "escape":
        return escape_expr(draw, ctx)
    a = expr(draw, ctx, depth + 1)
    shape = draw(st.sampled_from(("concat", "plus", "coalesce", "length", "typeof", "substr", "case", "hex")))
    if shape in ("length", "typeof", "hex"):
        return f"{shape}({a})"
    if shape == "substr":
        return f"substr({a}, 1, 8)"
    b = expr(draw, ctx, depth + 1)
    if shape == "concat":
        return f"({a} || {b})"
    if shape == "plus":
        return f"({a} + {b})"
    if shape == "coalesce":
        return f"coalesce({a}, {b})"
    return f"CASE WHEN {a} IS NULL THEN {b} ELSE 'set' END"


def _exprs(draw: st.DrawFn, ctx: Ctx, n: int) -> str:
    return ", ".join(expr(draw, ctx) for _ in range(n))


def _columns(draw: st.DrawFn, table: Table) -> list[str]:
    return draw(st.lists(st.sampled_from(list(table.columns)), min_size=1, max_size=len(table.columns),
                         unique=True))


def _where(draw: st.DrawFn, table: Table, ctx: Ctx) -> str:
    t = f"{PREFIX}{table.name}"
    kinds = ["modulo", "last", "all", "not_null", "less"]
    if ctx.grammar.sources:
        kinds += ["random_rows", "coin"]
    kind = draw(st.sampled_from(kinds))
    if kind == "modulo":
        return f"rowid % {draw(st.integers(2, 5))} = {draw(st.integers(0, 1))}"
    if kind == "random_rows":
        return f"rowid IN (SELECT rowid FROM {t} ORDER BY random() LIMIT {draw(st.integers(1, 3))})"
    if kind == "last":
        return f"rowid = (SELECT max(rowid) FROM {t})"
    if kind == "coin":
        return "abs(random()) % 2 = 0"
    if kind == "all":
        return "1"
    column = draw(st.sampled_from(list(table.columns)))
    if kind == "not_null":
        return f"{column} IS NOT NULL"
    return f"{column} < {expr(draw, ctx, 1)}"


# == statements =================================================================================
@dataclass(frozen=True)
class Schema:
    tables: tuple[Table, ...]
    log: Table
    views: tuple[tuple[str, int], ...]
    """(name, number of columns a0..a{n-1})"""

    @property
    def writable(self) -> tuple[Table, ...]:
        return self.tables + (self.log,)


def _new_ctx(draw: st.DrawFn, schema: Schema, g: Grammar, columns: Sequence[str] = ()) -> Ctx:
    return Ctx(columns=columns, named=draw(st.integers(0, 3)) == 3, grammar=g, tables=schema.writable)


def insert_values(draw: st.DrawFn, schema: Schema, g: Grammar) -> Stmt:
    table = draw(st.sampled_from(schema.writable))
    ctx = _new_ctx(draw, schema, g)
    verb = draw(st.sampled_from(("INSERT", "INSERT", "INSERT OR REPLACE", "INSERT OR IGNORE", "REPLACE")))
    if draw(st.integers(0, 5)) == 5:
        return ctx.stmt(f"{verb} INTO {PREFIX}{table.name} DEFAULT VALUES")
    columns = _columns(draw, table)
    with_id = table.pk and draw(st.integers(0, 3)) == 3
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        values = _exprs(draw, ctx, len(columns))
        rows.append(f"({draw(st.integers(1, 8))}, {values})" if with_id else f"({values})")
    names = ", ".join((["id"] if with_id else []) + columns)
    return ctx.stmt(f"{verb} INTO {PREFIX}{table.name}({names}) VALUES {', '.join(rows)}")


def insert_select(draw: st.DrawFn, schema: Schema, g: Grammar) -> Stmt:
    target = draw(st.sampled_from(schema.writable))
    source = draw(st.sampled_from(schema.writable))
    ctx = _new_ctx(draw, schema, g, source.columns)
    columns = _columns(draw, target)
    order = draw(st.sampled_from(("ORDER BY random()", "ORDER BY random()", "ORDER BY random()",
                                  "ORDER BY rowid DESC", "ORDER BY random(), rowid", "")
                                 if g.sources else ("ORDER BY rowid DESC", "ORDER BY rowid", "")))
    where = f" WHERE {_where(draw, source, ctx)}" if draw(st.booleans()) else ""
    return ctx.stmt(f"INSERT INTO {PREFIX}{target.name}({', '.join(columns)}) "
                    f"SELECT {_exprs(draw, ctx, len(columns))} FROM {PREFIX}{source.name}{where} "
                    f"{order} LIMIT {draw(st.integers(1, 4))}")


def insert_from_view(draw: st.DrawFn, schema: Schema, g: Grammar) -> Stmt:
    view, width = draw(st.sampled_from(schema.views))
    target = draw(st.sampled_from(schema.writable))
    columns = _columns(draw, target)
    picked = ", ".join(f"a{i % width}" for i in range(len(columns)))
    order = draw(st.sampled_from(("", " ORDER BY random()") if g.sources else ("", " ORDER BY rowid")))
    return Stmt(f"INSERT INTO {PREFIX}{target.name}({', '.join(columns)}) SELECT {picked} "
                f"FROM {PREFIX}{view}{order} LIMIT {draw(st.integers(1, 3))}")


def update(draw: st.DrawFn, schema: Schema, g: Grammar) -> Stmt:
    table = draw(st.sampled_from(schema.writable))
    ctx = _new_ctx(draw, schema, g, table.columns)
    columns = _columns(draw, table)[:2]
    sets = ", ".join(f"{c} = {expr(draw, ctx)}" for c in columns)
    return ctx.stmt(f"UPDATE {PREFIX}{table.name} SET {sets} WHERE {_where(draw, table, ctx)}")


def delete(draw: st.DrawFn, schema: Schema, g: Grammar) -> Stmt:
    table = draw(st.sampled_from(schema.writable))
    t = f"{PREFIX}{table.name}"
    options = [f"rowid % 5 = {draw(st.integers(0, 4))}", f"rowid = (SELECT min(rowid) FROM {t})"]
    if g.sources:
        options += [f"rowid IN (SELECT rowid FROM {t} ORDER BY random() LIMIT 1)", "abs(random()) % 4 = 0"]
    where = draw(st.sampled_from(options))
    return Stmt(f"DELETE FROM {t} WHERE {where}")


def create_as(draw: st.DrawFn, schema: Schema, g: Grammar, n: int) -> Stmt:
    ctx = _new_ctx(draw, schema, g)
    if draw(st.booleans()):
        source = draw(st.sampled_from(schema.writable))
        ctx.columns = source.columns
        columns = ", ".join(f"{expr(draw, ctx)} AS a{i}" for i in range(draw(st.integers(1, 3))))
        order = "random()" if g.sources else "rowid"
        return ctx.stmt(f"CREATE TABLE IF NOT EXISTS {PREFIX}x{n} AS SELECT {columns} FROM {PREFIX}{source.name} "
                        f"ORDER BY {order} LIMIT {draw(st.integers(1, 4))}")
    columns = ", ".join(f"{expr(draw, ctx)} AS a{i}" for i in range(draw(st.integers(1, 3))))
    return ctx.stmt(f"CREATE TABLE IF NOT EXISTS {PREFIX}x{n} AS SELECT {columns}")


def alter(draw: st.DrawFn, schema: Schema, g: Grammar, n: int) -> Stmt:
    table = draw(st.sampled_from(schema.tables))
    # SQLite accepts a non-constant default here while the table is empty
    default = draw(st.sampled_from(("0", "'x'", "NULL", "CURRENT_TIMESTAMP", "(random())")
                                   if g.sources else ("0", "'x'", "NULL")))
    return Stmt(f"ALTER TABLE {PREFIX}{table.name} ADD COLUMN e{n} DEFAULT {default}")


def escape(draw: st.DrawFn, schema: Schema, g: Grammar, n: int) -> Stmt:
    """Per-node state the store must refuse: temp objects (gone after a store restart)."""
    t0 = f"{PREFIX}{schema.tables[0].name}"
    log = f"{PREFIX}{schema.log.name}"
    return Stmt(draw(st.sampled_from((
        f"CREATE TABLE IF NOT EXISTS temp.{PREFIX}tmp(a, b)",
        f"INSERT INTO temp.{PREFIX}tmp VALUES (random(), {n})",
        f"INSERT INTO {t0}({schema.tables[0].columns[0]}) SELECT a FROM temp.{PREFIX}tmp",
        f"CREATE TRIGGER IF NOT EXISTS temp.{PREFIX}ttr{n} AFTER INSERT ON main.{t0} "
        f"BEGIN INSERT INTO main.{log}(src, v) VALUES ('temp', {n}); END",
        f"CREATE VIEW IF NOT EXISTS temp.{PREFIX}tv AS SELECT {n} AS a0",
        f"INSERT INTO {log}(src, v) VALUES ('tc', total_changes())",
        f"INSERT INTO {log}(src, v) SELECT 'db', file FROM pragma_database_list",
    ))))


def _statement(draw: st.DrawFn, schema: Schema, g: Grammar, n: int) -> Stmt:
    kinds = ["values"] * 5 + ["select"] * 3 + ["update"] * 3 + ["delete", "create_as", "alter"]
    if schema.views:
        kinds += ["view", "view"]
    if g.escapes:
        kinds.append("escape")
    kind = draw(st.sampled_from(kinds))
    if kind == "values":
        return insert_values(draw, schema, g)
    if kind == "select":
        return insert_select(draw, schema, g)
    if kind == "view":
        return insert_from_view(draw, schema, g)
    if kind == "update":
        return update(draw, schema, g)
    if kind == "delete":
        return delete(draw, schema, g)
    if kind == "create_as":
        return create_as(draw, schema, g, n)
    if kind == "alter":
        return alter(draw, schema, g, n)
    return escape(draw, schema, g, n)


# == schema =====================================================================================
def _table(draw: st.DrawFn, index: int, g: Grammar) -> tuple[Table, str]:
    pk = draw(st.booleans())
    columns = tuple(f"c{i}" for i in range(draw(st.integers(1, 4))))
    parts = ["id INTEGER PRIMARY KEY"] if pk else []
    for column in columns:
        declared = draw(st.sampled_from(TYPES))
        default = f" DEFAULT {draw(st.sampled_from(DEFAULTS if g.sources else DEFAULTS[:4]))}" \
            if draw(st.integers(0, 2)) else ""
        parts.append(f"{column}{' ' + declared if declared else ''}{default}")
    table = Table(f"t{index}", columns, pk)
    return table, f"CREATE TABLE IF NOT EXISTS {PREFIX}{table.name}({', '.join(parts)})"


def _trigger(draw: st.DrawFn, tables: Sequence[Table], log: Table, index: int, g: Grammar) -> str:
    i = draw(st.integers(0, len(tables) - 1))
    on = tables[i]
    event = draw(st.sampled_from(("INSERT", "INSERT", "UPDATE", f"UPDATE OF {on.columns[0]}", "DELETE")))
    row = "OLD" if event == "DELETE" else "NEW"
    timing = draw(st.sampled_from(("AFTER", "AFTER", "AFTER", "BEFORE")))
    ctx = Ctx(columns=[f"{row}.{c}" for c in on.columns] + [f"{row}.rowid"], params=False, grammar=g,
              tables=list(tables) + [log])
    body = [f"INSERT INTO {PREFIX}{log.name}(src, v) VALUES ('tr{index}', {expr(draw, ctx)})"]
    later = tables[i + 1:]
    if len(later) > 0 and draw(st.booleans()):
        other = draw(st.sampled_from(list(later)))
        columns = _columns(draw, other)
        values = _exprs(draw, ctx, len(columns))
        body.append(f"INSERT INTO {PREFIX}{other.name}({', '.join(columns)}) VALUES ({values})")
    if len(later) > 0 and draw(st.booleans()):
        other = draw(st.sampled_from(list(later)))
        t = f"{PREFIX}{other.name}"
        body.append(f"UPDATE {t} SET {other.columns[-1]} = {expr(draw, ctx)} "
                    f"WHERE rowid = (SELECT max(rowid) FROM {t})")
    body = list(draw(st.permutations(body)))
    whens = ["", "", f" WHEN {row}.rowid % 2 = 0"] + ([" WHEN abs(random()) % 3 > 0"] if g.sources else [])
    when = draw(st.sampled_from(whens))
    return (f"CREATE TRIGGER IF NOT EXISTS {PREFIX}tr{index} {timing} {event} ON {PREFIX}{on.name}{when} "
            f"BEGIN {'; '.join(body)}; END")


def _view(draw: st.DrawFn, tables: Sequence[Table], log: Table, index: int, g: Grammar) -> tuple[str, int]:
    width = draw(st.integers(1, 3))
    ctx = Ctx(params=False, grammar=g, tables=list(tables) + [log])
    if draw(st.integers(0, 3)) == 3:
        select = ", ".join(f"{expr(draw, ctx)} AS a{i}" for i in range(width))
        return f"CREATE VIEW IF NOT EXISTS {PREFIX}v{index} AS SELECT {select}", width
    source = draw(st.sampled_from(list(tables)))
    ctx.columns = source.columns
    select = ", ".join(f"{expr(draw, ctx)} AS a{i}" for i in range(width))
    limit = f" ORDER BY {'random()' if g.sources else 'rowid'} LIMIT {draw(st.integers(1, 3))}"
    order = draw(st.sampled_from(("", limit)))
    return f"CREATE VIEW IF NOT EXISTS {PREFIX}v{index} AS SELECT {select} FROM {PREFIX}{source.name}{order}", width


def _request(draw: st.DrawFn, statements: Sequence[Stmt], schema_request: bool = False) -> Request:
    return Request(tuple(statements), transaction=draw(st.booleans()),
                   norwrandom=False if schema_request else draw(st.integers(0, 5)) == 5,
                   norwtime=False if schema_request else draw(st.integers(0, 5)) == 5,
                   via=0 if schema_request else draw(st.sampled_from((0, 0, 1, 2))))


@st.composite
def cases(draw: st.DrawFn, grammar: Grammar = Grammar(), max_requests: int = 14) -> Case:
    """A schema and the requests that work on it (see the module docstring)."""
    g = grammar
    tables, creates = [], []
    for index in range(draw(st.integers(1, 3))):
        table, sql = _table(draw, index, g)
        tables.append(table)
        creates.append(Stmt(sql))
    log = Table(LOG_TABLE, ("src", "v"))
    at, r = ("CURRENT_TIMESTAMP", "(random())") if g.sources else ("'then'", "0")
    creates.append(Stmt(f"CREATE TABLE IF NOT EXISTS {PREFIX}{LOG_TABLE}(id INTEGER PRIMARY KEY, src TEXT, "
                        f"at DEFAULT {at}, r DEFAULT {r}, v)"))
    extras = [Stmt(_trigger(draw, tables, log, i, g)) for i in range(draw(st.integers(0, 3)))]
    views = []
    for index in range(draw(st.integers(0, 2))):
        sql, width = _view(draw, tables, log, index, g)
        extras.append(Stmt(sql))
        views.append((f"v{index}", width))
    schema = Schema(tuple(tables), log, tuple(views))
    requests_ = [_request(draw, creates, schema_request=True)]
    if extras:
        requests_.append(_request(draw, extras, schema_request=True))
    work = []
    n = 0
    for _ in range(draw(st.integers(3, max_requests))):
        statements = []
        for _ in range(draw(st.integers(1, 3))):
            statements.append(_statement(draw, schema, g, n))
            n += 1
        work.append(_request(draw, statements))
    return Case(tuple(requests_), tuple(work))
