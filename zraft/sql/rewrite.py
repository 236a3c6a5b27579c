"""Make statements deterministic before they enter the Raft log.

Every node applies the log's SQL text to its own SQLite database, so RANDOM(), RANDOMBLOB(N),
'now' and CURRENT_TIMESTAMP would give each node a different answer. The node that receives
a statement replaces each of them with a literal once; every node then applies the same text.

The rewrite is textual: only the bytes of a rewritten construct change, everything else
(strings, quoted identifiers, comments, blobs, spacing, case) is copied through untouched.
See DESIGN.md for the rules and for what is deliberately left alone.
"""

from __future__ import annotations

import random as _random
import re
import time as _time
from collections.abc import Callable
from typing import Final, Protocol

from zraft.sql.instant import Instant
from zraft.sql.lexer import (
    BLOB, IDENT, KIND, NUMBER, PUNCT, QIDENT, START, STRING, TEXT, VARIABLE, Token, split_statements,
    token_end, tokenize,
)
from zraft.sql.syntax import syntax_error

__all__ = ["MAX_RANDOMBLOB_BYTES", "Clock", "RandomSource", "RewriteError", "explain_rewrite", "rewrite"]

MAX_RANDOMBLOB_BYTES: Final = 1 << 20
"""Largest RANDOMBLOB(N) inlined; a bigger one is refused rather than bloating the log."""

Clock = Callable[[], int]
"""Nanoseconds since the Unix epoch, like time.time_ns (the default)."""


class RandomSource(Protocol):
    """What the rewriter needs from a random generator (random.Random fits)."""

    def getrandbits(self, k: int, /) -> int: ...

    def randbytes(self, n: int, /) -> bytes: ...


class RewriteError(ValueError):
    """A statement cannot be made deterministic (RANDOMBLOB(N) with N too large)."""


_SYSTEM_RANDOM: Final = _random.SystemRandom()   # os.urandom: randomblob() may mint tokens

# Zero-argument date functions and strftime(fmt) mean 'now' without saying it.
_IMPLICIT_NOW: Final = re.compile(r"(?:date|time|julianday|unixepoch)[\"\]`]?\s*\(\s*(?:\)|/\*|--)|strftime")

_DATE_FUNCTIONS: Final = frozenset({"date", "time", "datetime", "julianday", "unixepoch"})
_TIME_FUNCTIONS: Final = _DATE_FUNCTIONS | {"strftime", "timediff"}
_RANDOM_FUNCTIONS: Final = frozenset({"random", "randomblob"})
_FUNCTIONS: Final = _TIME_FUNCTIONS | _RANDOM_FUNCTIONS
_CURRENT: Final[dict[str, Callable[[Instant], str]]] = {
    "current_timestamp": Instant.current_timestamp,
    "current_date": Instant.current_date,
    "current_time": Instant.current_time,
}
# Modifiers that read a numeric time value differently from 'now'.
_REINTERPRETING: Final = frozenset({"utc", "unixepoch", "julianday", "auto"})
# Words after which an ORDER BY clause is over (when they follow a complete term).
_ORDER_BY_ENDS: Final = frozenset({"limit", "offset", "on", "returning", "rows", "range", "groups"})
_KEYWORDS: Final = _FUNCTIONS | _CURRENT.keys() | _ORDER_BY_ENDS | {"order"}
# Keywords after which an expression starts (so CURRENT_DATE there is the keyword).
_EXPR_LEAD: Final = frozenset({
    "select", "distinct", "all", "where", "and", "or", "not", "on", "by", "having", "when",
    "then", "else", "case", "is", "in", "like", "glob", "regexp", "match", "between", "escape",
    "limit", "offset", "returning", "values", "do", "filter", "exists",
})


def rewrite(sql: str, *, random: bool = True, time: bool = True,
            rng: RandomSource | None = None, now: Clock | None = None) -> str:
    """`sql` with every non-deterministic construct replaced by a literal.

    random=False / time=False switch off the RANDOM()/RANDOMBLOB() and the time rewrites
    (rqlite's norwrandom / norwtime). The clock is read at most once per call, so every
    statement of a multi-statement string sees the same instant. Raises RewriteError.
    """
    if not _may_rewrite(sql, random, time):
        return sql
    ctx = _Context(sql, random, time, rng or _SYSTEM_RANDOM, now or _time.time_ns)
    return ctx.run()


def explain_rewrite(sql: str, *, random: bool = True, time: bool = True,
                    rng: RandomSource | None = None, now: Clock | None = None) -> dict[str, str]:
    """One /db/sql result: {"original", "rewritten"}, or {"original", "error"} when the
    statement does not parse (SQLite's grammar is the judge) or cannot be rewritten."""
    error = syntax_error(sql)
    if error is not None:
        return {"original": sql, "error": error}
    try:
        rewritten = rewrite(sql, random=random, time=time, rng=rng, now=now)
    except RewriteError as exc:
        return {"original": sql, "error": str(exc)}
    error = syntax_error(rewritten) if rewritten != sql else None
    if error is not None:
        return {"original": sql, "error": f"rewritten statement does not parse: {error}"}
    return {"original": sql, "rewritten": rewritten}


def _may_rewrite(sql: str, rand: bool, tm: bool) -> bool:
    """The hot path: a substring test decides, for almost every statement, that there is
    nothing to do, without tokenizing."""
    low = sql.lower()
    if rand and "random" in low:
        return True
    if not tm:
        return False
    if "now" in low or "current_" in low:
        return True
    return ("date" in low or "time" in low or "epoch" in low or "julianday" in low) \
        and _IMPLICIT_NOW.search(low) is not None


class _Context:
    """One rewrite() call: the text, its tokens, the flags, the shared instant, the edits."""

    def __init__(self, sql: str, rand: bool, tm: bool, rng: RandomSource, clock: Clock) -> None:
        self.sql = sql
        self.tokens = tokenize(sql)
        self.rand = rand
        self.time = tm
        self.rng = rng
        self.clock = clock
        self._instant: Instant | None = None
        self.edits: list[tuple[int, int, str]] = []

    def run(self) -> str:
        """Scan each statement, then splice the edits into the original text."""
        spans = split_statements(self.tokens) if ";" in self.sql else [(0, len(self.tokens))]
        for lo, hi in spans:
            _Statement(self, lo, hi).rewrite()
        return self._apply()

    def instant(self) -> Instant:
        """The call's single clock reading, taken on first use."""
        if self._instant is None:
            self._instant = Instant.from_ns(self.clock())
        return self._instant

    def replace(self, start: int, end: int, text: str) -> None:
        """Record that sql[start:end] becomes `text` (start == end inserts)."""
        if end < len(self.sql) and _is_glue_char(self.sql[end]):
            text += " "          # keep `random()AS x` from becoming the illegal `123AS x`
        self.edits.append((start, end, text))

    def _apply(self) -> str:
        out: list[str] = []
        pos = 0
        for start, end, text in sorted(self.edits, key=lambda edit: edit[0]):
            out += (self.sql[pos:start], text)
            pos = end
        out.append(self.sql[pos:])
        return "".join(out)


class _Statement:
    """The scan of one statement over its significant (non-trivia) tokens."""

    def __init__(self, ctx: _Context, lo: int, hi: int) -> None:
        self.ctx = ctx
        self.sig = ctx.tokens[lo:hi]

    def rewrite(self) -> None:
        """Walk the tokens once, tracking parenthesis depth and whether we are inside an
        ORDER BY clause (RANDOM() there is left alone: a constant would stop the shuffle)."""
        start = self._first_rewritable()
        if start is None:
            return
        sig, n = self.sig, len(self.sig)
        depth = 0
        order_depth: int | None = None        # depth at which the open ORDER BY began
        j = start
        while j < n:
            kind, text, _ = sig[j]
            if kind == PUNCT:
                if text == "(":
                    depth += 1
                elif text == ")":
                    depth -= 1
                    if order_depth is not None and depth < order_depth:
                        order_depth = None
            elif kind == IDENT:
                if (word := text.lower()) in _KEYWORDS:
                    j, order_depth = self._word(j, word, depth, order_depth)
            elif kind == QIDENT and (name := _unquote(text).lower()) in _FUNCTIONS:
                j = self._call(j, name, order_depth is not None)
            j += 1

    def _word(self, j: int, word: str, depth: int, order_depth: int | None) -> tuple[int, int | None]:
        """Act on a word that matters; returns the last token consumed and the ORDER BY state."""
        if word == "order" and self._is_word(j + 1, "by"):
            return j, depth if order_depth is None else order_depth
        if word in _ORDER_BY_ENDS:
            ends = order_depth == depth and self._ends_expression(j - 1)
            return j, None if ends else order_depth
        if word in _CURRENT:
            self._current(j, word)
        elif word in _FUNCTIONS:
            j = self._call(j, word, order_depth is not None)
        return j, order_depth

    def _first_rewritable(self) -> int | None:
        """Where rewriting may start, or None for a statement that must keep its text.

        Schema statements store their expressions to be evaluated later (DEFAULT, trigger
        bodies, views), where a frozen literal would change their meaning, so CREATE and
        ALTER are left alone, except the SELECT of CREATE TABLE ... AS, which runs now.
        """
        j = 0
        if self._is_word(j, "explain"):
            j += 3 if self._is_word(j + 1, "query") and self._is_word(j + 2, "plan") else 1
        if self._is_word(j, "alter"):
            return None
        if not self._is_word(j, "create"):
            return j
        j += 2 if self._is_word(j + 1, "temp") or self._is_word(j + 1, "temporary") else 1
        return self._after_top_level_as(j + 1) if self._is_word(j, "table") else None

    def _after_top_level_as(self, j: int) -> int | None:
        depth = 0
        for k in range(j, len(self.sig)):
            kind, text, _ = self.sig[k]
            depth += 1 if text == "(" and kind == PUNCT else -1 if text == ")" and kind == PUNCT else 0
            if depth == 0 and kind == IDENT and text.lower() == "as":
                return k + 1
        return None

    # -- constructs ----------------------------------------------------------------------
    def _call(self, j: int, name: str, in_order_by: bool) -> int:
        """Rewrite a call of a known function at sig[j]; returns the last token consumed."""
        if not self._is_punct(j + 1, "(") or self._is_punct(j - 1, "."):
            return j
        parsed = self._arguments(j + 1)
        if parsed is None:
            return j
        args, close = parsed
        if name in _RANDOM_FUNCTIONS:
            if self.ctx.rand and not in_order_by:
                return self._random_call(name, j, args, close)
            return j
        if self.ctx.time:
            self._time_call(name, j, args)
        return j

    def _random_call(self, name: str, j: int, args: list[tuple[int, int]], close: int) -> int:
        if name == "random":
            literal = None if args else _int64_literal(self.ctx.rng.getrandbits(64))
        else:
            size = _blob_size(self.sig[args[0][0]:args[0][1]]) if len(args) == 1 else None
            literal = None if size is None else f"x'{self.ctx.rng.randbytes(size).hex().upper()}'"
        if literal is None:
            return j
        self.ctx.replace(self.sig[j][START], token_end(self.sig[close]), literal + self._trivia(j, close))
        return close

    def _time_call(self, name: str, j: int, args: list[tuple[int, int]]) -> None:
        """Replace a 'now' argument (or supply the implied one) with the instant."""
        if name == "timediff":
            for arg in args[:2]:
                self._replace_now(arg, ())
            return
        slot = 1 if name == "strftime" else 0
        if len(args) == slot:             # date() / strftime(fmt): 'now' is implied
            at = token_end(self.sig[args[-1][1] - 1] if args else self.sig[j + 1])
            literal = self.ctx.instant().julian_day()
            self.ctx.replace(at, at, f", {literal}" if args else literal)
        elif len(args) > slot:
            self._replace_now(args[slot], args[slot + 1:])

    def _replace_now(self, arg: tuple[int, int], modifiers: list[tuple[int, int]] | tuple[()]) -> None:
        lo, hi = arg
        if hi - lo != 1 or not _is_now(self.sig[lo]):
            return
        instant = self.ctx.instant()
        exact = any(self._reinterprets(mod) for mod in modifiers)
        literal = instant.iso_utc() if exact else instant.julian_day()
        self.ctx.replace(self.sig[lo][START], token_end(self.sig[lo]), literal)

    def _reinterprets(self, modifier: tuple[int, int]) -> bool:
        """Might this modifier treat a numeric time value unlike 'now'? Unknown (not a
        single string literal, e.g. a parameter) counts as yes."""
        lo, hi = modifier
        kind, text, _ = self.sig[lo]
        if hi - lo != 1 or kind != STRING:
            return True
        return _string_value(text).strip().lower() in _REINTERPRETING

    def _current(self, j: int, word: str) -> None:
        """CURRENT_TIMESTAMP/DATE/TIME are keywords only where an expression may start;
        after `.`, AS, FROM... SQLite reads them as names (keyword fallback)."""
        if not self.ctx.time or not self._allows_expression(j - 1) or self._is_punct(j + 1, "."):
            return
        tok = self.sig[j]
        self.ctx.replace(tok[START], token_end(tok), _CURRENT[word](self.ctx.instant()))

    # -- token helpers -------------------------------------------------------------------
    def _arguments(self, open_: int) -> tuple[list[tuple[int, int]], int] | None:
        """Argument ranges [lo, hi) of the call whose '(' is sig[open_], and the index of
        its ')'; None when the parenthesis never closes."""
        args: list[tuple[int, int]] = []
        depth = 0
        lo = open_ + 1
        for k in range(lo, len(self.sig)):
            kind, text, _ = self.sig[k]
            if kind != PUNCT:
                continue
            if text == "(":
                depth += 1
            elif text == ")" and depth > 0:
                depth -= 1
            elif text == ")":
                if k > lo or args:
                    args.append((lo, k))
                return args, k
            elif text == "," and depth == 0:
                args.append((lo, k))
                lo = k + 1
        return None

    def _trivia(self, j: int, k: int) -> str:
        """The whitespace and comments between sig[j] and sig[k], in order."""
        sig, sql = self.sig, self.ctx.sql
        return "".join(sql[token_end(sig[i]):sig[i + 1][START]] for i in range(j, k))

    def _is_word(self, j: int, word: str) -> bool:
        return j < len(self.sig) and self.sig[j][KIND] == IDENT and self.sig[j][TEXT].lower() == word

    def _is_punct(self, j: int, text: str) -> bool:
        return 0 <= j < len(self.sig) and self.sig[j][KIND] == PUNCT and self.sig[j][TEXT] == text

    def _allows_expression(self, j: int) -> bool:
        """Can an expression start right after sig[j]?"""
        if j < 0:
            return True
        kind, text, _ = self.sig[j]
        if kind == PUNCT:
            return text not in (")", ".")
        return kind == IDENT and text.lower() in _EXPR_LEAD

    def _ends_expression(self, j: int) -> bool:
        """Can sig[j] be the last token of an expression (so a keyword may follow)?"""
        if j < 0:
            return False
        kind, text, _ = self.sig[j]
        if kind in (STRING, BLOB, NUMBER, VARIABLE, QIDENT):
            return True
        if kind == PUNCT:
            return text == ")"
        return kind == IDENT and text.lower() not in _EXPR_LEAD


def _is_now(tok: Token) -> bool:
    """'now' as SQLite matches it (case-insensitive, exact), or the bare word now."""
    kind, text, _ = tok
    low = text.lower()
    return (kind == STRING and low == "'now'") or (kind == IDENT and low == "now")


def _int64_literal(bits: int) -> str:
    """A signed 64-bit literal; negatives parenthesised so `5-random()` cannot become the
    comment `5--123`."""
    value = bits - (1 << 64) if bits >= 1 << 63 else bits
    return str(value) if value >= 0 else f"({value})"


def _blob_size(tokens: list[Token]) -> int | None:
    """max(N, 1) for RANDOMBLOB(N) with N a (signed) numeric literal, else None."""
    sign = 1
    if len(tokens) == 2 and tokens[0][KIND] == PUNCT and tokens[0][TEXT] in ("-", "+"):
        sign = -1 if tokens[0][TEXT] == "-" else 1
        tokens = tokens[1:]
    if len(tokens) != 1 or tokens[0][KIND] != NUMBER:
        return None
    literal = tokens[0][TEXT]
    value = _number_value(literal)
    if value is None:
        return None
    size = sign * value
    if size > MAX_RANDOMBLOB_BYTES:
        raise RewriteError(f"randomblob({literal}) is larger than the "
                           f"{MAX_RANDOMBLOB_BYTES} bytes that can be inlined in a statement")
    return int(size) if size >= 1 else 1


def _number_value(text: str) -> int | float | None:
    """The value SQLite gives a numeric literal (hex is 64-bit two's complement)."""
    digits = text.replace("_", "")
    try:
        if digits[:2].lower() == "0x":
            value = int(digits, 16)
            return None if value >= 1 << 64 else value - (1 << 64) if value >= 1 << 63 else value
        if any(c in digits for c in ".eE"):
            return float(digits)
        return int(digits)
    except ValueError:
        return None


def _string_value(literal: str) -> str:
    return literal[1:-1].replace("''", "'")


def _unquote(text: str) -> str:
    """The name inside "x", `x` or [x]."""
    if text[0] == "[":
        return text[1:-1]
    return text[1:-1].replace(text[0] * 2, text[0])


def _is_glue_char(char: str) -> bool:
    """Would this character fuse with a literal placed just before it?"""
    return char.isalnum() or char in "_$'" or ord(char) >= 0x80
