"""Ask SQLite itself whether statements are grammatical, for the /db/sql inspector.

Why SQLite and not a parser of our own: the only grammar that matters is the one every node
will apply the statement with. Each statement is prepared in EXPLAIN QUERY PLAN mode on a throwaway,
empty in-memory database, so nothing is ever executed. Because the schema is empty, errors
that only say a table, column or function is unknown are not grammar errors and are ignored;
what remains is what rqlite's /db/sql reports as an error: text that does not parse.
"""

from __future__ import annotations

from typing import Final

import apsw

from zraft.sql.lexer import START, split_statements, token_end, tokenize

_GRAMMAR_ERRORS: Final = (
    "syntax error",
    "incomplete input",
    "unrecognized token",
    "unknown table option",
    "hex literal too big",
)


def syntax_error(sql: str) -> str | None:
    """SQLite's message for the first statement of `sql` that does not parse, else None."""
    tokens = tokenize(sql)
    conn = apsw.Connection(":memory:")
    try:
        for lo, hi in split_statements(tokens):
            error = _grammar_error(conn, sql[tokens[lo][START]:token_end(tokens[hi - 1])])
            if error is not None:
                return error
    finally:
        conn.close()
    return None


def _grammar_error(conn: apsw.Connection, statement: str) -> str | None:
    """Prepare one statement in EXPLAIN QUERY PLAN mode: stepping it reports the plan (plain
    text, unlike EXPLAIN's opcode listing, which can hold undecodable blob bytes) and never
    runs the statement."""
    try:
        conn.execute(statement, can_cache=False, explain=2).close()
    except apsw.Error as exc:
        message = str(exc)
        return message if any(marker in message for marker in _GRAMMAR_ERRORS) else None
    except ValueError as exc:  # apsw refuses text with a NUL byte before SQLite sees it
        return f"invalid SQL text: {exc}"
    return None
