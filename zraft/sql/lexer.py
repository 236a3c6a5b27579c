"""SQLite's lexical grammar, just precisely enough to know where every token starts and ends.

Why a lexer of our own (see DESIGN.md): the rewriter must never touch a byte inside a
string, a quoted identifier, a blob or a comment, so it needs token boundaries that agree
with SQLite's own tokenizer (`tokenize.c`) on every input, including the odd ones:
`'C:\\'` is a complete string (no backslash escapes), `[a b]` and `` `x` `` are
identifiers, an unterminated `/*` comment runs to the end of the input, `1_000` is one
number, `:now` / `$now` / `@now` are parameters, any non-ASCII character is an identifier
character.

Tokens SQLite would call illegal (an unterminated string, `123abc`) are
kept whole and opaque: SQLite rejects such a statement on every node alike.
"""

from __future__ import annotations

import re
from typing import Final

COMMENT: Final = "comment"
STRING: Final = "string"
BLOB: Final = "blob"
IDENT: Final = "ident"
QIDENT: Final = "qident"
NUMBER: Final = "number"
VARIABLE: Final = "variable"
PUNCT: Final = "punct"
ERROR: Final = "error"

Token = tuple[str, str, int]
"""(kind, text, start offset). A plain tuple: building one per token is the lexer's main
cost, and a tuple is several times cheaper to build than a NamedTuple."""
KIND: Final = 0
TEXT: Final = 1
START: Final = 2

_ID_CHAR = "0-9A-Za-z_$\u0080-\U0010ffff"        # sqlite3IsIdChar: also every byte >= 0x80
_ID_START = "A-Za-z_\u0080-\U0010ffff"
_DIGITS = "[0-9][0-9_]*"
_WS = " \t\n\f\r\v"                               # SQLite's whitespace; nothing matches it

# Order matters (first match wins) and puts the frequent kinds first: x'..' before names,
# comments before the operators - and /, terminated quotes before the unterminated ones.
_RULES: Final = (
    (BLOB, "[xX]'[^']*'"),
    (IDENT, f"[{_ID_START}][{_ID_CHAR}]*"),
    (PUNCT, "[(),;]|==?"),
    (STRING, "'(?:[^']|'')*'"),
    (NUMBER, f"(?:0[xX][0-9A-Fa-f_]+|(?:{_DIGITS}(?:\\.[0-9_]*)?|\\.{_DIGITS})"
             f"(?:[eE][+-]?{_DIGITS})?)[{_ID_CHAR}]*"),    # trailing id chars: one illegal token
    (COMMENT, r"--[^\n]*|/\*[\s\S]*?(?:\*/|\Z)"),     # unterminated /* runs to the end
    (QIDENT, r'"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]'),
    (VARIABLE, f"\\?[0-9]*|[:@$#](?:[{_ID_CHAR}]|::)+(?:\\([^)\\s]*\\)?)?"),
    (PUNCT, f"->>|->|\\|\\||<>|<=|>=|==|!=|<<|>>|[^'\"`\\[{_WS}]"),
    (ERROR, r"['\"`\[][\s\S]*"),                 # unterminated quote or bracket: rest of input
)
_TOKEN_RE: Final = re.compile("|".join(f"(?P<{kind}{i}>{rx})" for i, (kind, rx) in enumerate(_RULES)))
_KIND_OF_GROUP: Final = {f"{kind}{i}": kind for i, (kind, _) in enumerate(_RULES)}


def tokenize(sql: str) -> list[Token]:
    """The significant tokens of `sql`, in order: whitespace and comments are dropped
    (what lies between two tokens is only ever whitespace and comments)."""
    kinds = _KIND_OF_GROUP
    return [(kind, m.group(), m.start()) for m in _TOKEN_RE.finditer(sql)
            if (kind := kinds[m.lastgroup or ""]) != COMMENT]


def token_end(tok: Token) -> int:
    """Offset just past the token."""
    return tok[START] + len(tok[TEXT])


def split_statements(tokens: list[Token]) -> list[tuple[int, int]]:
    """Token index ranges [lo, hi) of the statements, each with its closing `;` if any.

    A `;` ends a statement, except inside the body of CREATE TRIGGER, which only ends at
    `; END ;` (the rule of sqlite3_complete), so a trigger is never cut in pieces.
    """
    spans: list[tuple[int, int]] = []
    lo = 0
    head: list[str] = []
    trigger = False
    last_two = ("", "")
    for i, (kind, text, _) in enumerate(tokens):
        if kind == PUNCT and text == ";" and (not trigger or last_two == (";", "end")):
            spans.append((lo, i + 1))
            lo, head, trigger, last_two = i + 1, [], False, ("", "")
            continue
        if len(head) < 6:
            head.append(text.lower() if kind == IDENT else "")
            trigger = _is_create_trigger(head)
        if trigger:
            last_two = (last_two[1], text.lower() if kind in (IDENT, PUNCT) else "")
    if lo < len(tokens):
        spans.append((lo, len(tokens)))
    return spans


def _is_create_trigger(head: list[str]) -> bool:
    """Does a statement starting with these (lower-cased) words create a trigger?"""
    words = head
    if words[:1] == ["explain"]:
        words = words[3:] if words[1:3] == ["query", "plan"] else words[1:]
    if words[:1] != ["create"]:
        return False
    rest = words[2:] if words[1:2] in (["temp"], ["temporary"]) else words[1:]
    return rest[:1] == ["trigger"]
