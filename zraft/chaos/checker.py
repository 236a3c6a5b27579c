"""Checkers for chaos histories: register linearizability (WGL), set and bank invariants.

A checker answers one question about a history: could a correct system have produced
it? Each one is written so that it never blames the system for something the history
cannot prove (``info`` operations may or may not have happened, equal timestamps count
as concurrent) and never passes a history it could not fully decide (a timed-out key is
``unknown``, which counts as a failure).
"""

from __future__ import annotations

import enum
import math
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zraft.chaos.history import JSON, Event, HistoryError, Key, Operation, load_history, pair

Workload = Literal["register", "set", "bank"]
WORKLOAD_FUNCTIONS: dict[str, frozenset[str]] = {
    "register": frozenset({"read", "write", "cas"}),
    "set": frozenset({"add", "read"}),
    "bank": frozenset({"transfer", "read"}),
}
DEFAULT_KEY_BUDGET = 10.0
_BUDGET_CHECK_EVERY = 2048


class Verdict(enum.Enum):
    """Outcome of one check; ``UNKNOWN`` is a failure, never a pass."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


def freeze(value: JSON) -> Hashable:
    """JSON value -> hashable value, so register states can be memoized and compared."""
    if isinstance(value, list):
        return tuple(freeze(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


# =========================================================================== register


@dataclass(frozen=True, slots=True)
class KeyResult:
    """Verdict for one register key, with the operations to look at when it is not valid."""

    key: Key
    verdict: Verdict
    ops: int
    seconds: float
    explanation: str = ""
    involved: tuple[Operation, ...] = ()


class _Node:
    """An entry of the WGL event list: the call or the return of one operation.

    A doubly linked list lets the search *lift* a linearized operation out in O(1) and put
    it back in O(1) on backtrack, which is what makes WGL cheap per step.
    """

    __slots__ = ("op", "is_call", "match", "prev", "next")

    def __init__(self, op: int, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _lift(call: _Node) -> None:
    """Remove an operation's call and return nodes from the list."""
    ret = call.match
    assert ret is not None
    for node in (call, ret):
        assert node.prev is not None
        node.prev.next = node.next
        if node.next is not None:
            node.next.prev = node.prev


def _unlift(call: _Node) -> None:
    """Undo :func:`_lift`, in reverse order so the pointers line up again."""
    ret = call.match
    assert ret is not None
    for node in (ret, call):
        assert node.prev is not None
        node.prev.next = node
        if node.next is not None:
            node.next.prev = node


def _build_list(ops: Sequence[Operation]) -> _Node:
    """Sorted call/return list behind a sentinel head.

    Calls sort before returns at the same instant, so operations whose times touch are
    treated as concurrent: the checker gives the benefit of the doubt.
    """
    entries: list[tuple[float, int, int, _Node]] = []
    for i, op in enumerate(ops):
        call, ret = _Node(i, True), _Node(i, False)
        call.match = ret
        entries.append((op.call, 0, i, call))
        entries.append((op.ret, 1, i, ret))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    head = cur = _Node(-1, False)
    for *_, node in entries:
        cur.next, node.prev = node, cur
        cur = node
    return head


def _step(state: Hashable, op: Operation) -> tuple[bool, Hashable]:
    """The sequential register model: may ``op`` run on ``state``, and what state follows?

    An ``info`` cas whose expectation does not hold is allowed as a no-op (its outcome is
    unknown). An ``info`` op that never happened is equivalent to one linearized after
    everything else, which its infinite return time always permits, so no extra branch
    is needed for "dropped".
    """
    if op.f == "read":
        return freeze(op.result) == state, state
    if op.f == "write":
        return True, freeze(op.value)
    assert isinstance(op.value, list)
    expected, new = freeze(op.value[0]), freeze(op.value[1])
    if state == expected:
        return True, new
    return op.outcome == "info", state


@dataclass
class _Failure:
    """Deepest point the search reached before getting stuck, for the explanation."""

    depth: int = -1
    blocked: int = -1
    state: Hashable = None
    candidates: tuple[int, ...] = ()
    last: int | None = None


class _Timeout(Exception):
    """Raised inside the search when the key's wall-clock budget is spent."""


def _note_failure(failure: _Failure, head: _Node, stuck: _Node, state: Hashable,
                  stack: list[tuple[_Node, Hashable]]) -> None:
    """Remember the deepest dead end: the op that returned unlinearized, and its rivals."""
    if len(stack) <= failure.depth:
        return
    candidates: list[int] = []
    node = head.next
    while node is not None and node is not stuck:
        if node.is_call:
            candidates.append(node.op)
        node = node.next
    failure.depth, failure.blocked, failure.state = len(stack), stuck.op, state
    failure.candidates = tuple(candidates)
    failure.last = stack[-1][0].op if stack else None


def _wgl(ops: Sequence[Operation], deadline: float, failure: _Failure) -> bool:
    """Wing & Gong's search with Lowe's memoization on (linearized bitmask, state).

    Walk the event list: at a call, try to linearize that op now (if the model allows it
    and the resulting configuration is new); at a return of an op not yet linearized, the
    current prefix is hopeless, so backtrack the last choice. Success when every op has
    been lifted out of the list.
    """
    head = _build_list(ops)
    state: Hashable = None
    linearized = 0
    seen: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Node, Hashable]] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps % _BUDGET_CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise _Timeout
        assert entry is not None
        if entry.is_call:
            ok, new_state = _step(state, ops[entry.op])
            mask = linearized | (1 << entry.op)
            if ok and (mask, new_state) not in seen:
                seen.add((mask, new_state))
                stack.append((entry, state))
                state, linearized = new_state, mask
                _lift(entry)
                entry = head.next
                continue
            entry = entry.next
            continue
        _note_failure(failure, head, entry, state, stack)
        if not stack:
            return False
        entry, state = stack.pop()
        linearized &= ~(1 << entry.op)
        _unlift(entry)
        entry = entry.next
    return True


def _explain(ops: Sequence[Operation], failure: _Failure) -> tuple[str, tuple[Operation, ...]]:
    """Turn the deepest dead end into a sentence and the short list of ops involved."""
    blocked = ops[failure.blocked]
    rivals = [ops[i] for i in failure.candidates if i != failure.blocked]
    involved = [blocked] + rivals
    if failure.last is not None and failure.last != failure.blocked:
        involved.insert(0, ops[failure.last])
    text = (f"no linearization: after {failure.depth} ops the register held "
            f"{failure.state!r}, and {blocked.describe()} could not take effect before it "
            f"returned (with {len(rivals)} other pending op(s) tried first)")
    return text, tuple(involved)


def _expected(op: Operation) -> Hashable:
    assert isinstance(op.value, list)
    return freeze(op.value[0])


def _written(op: Operation) -> Hashable:
    if op.f == "cas":
        assert isinstance(op.value, list)
        return freeze(op.value[1])
    return freeze(op.value)


def _needed_info_ops(ops: Sequence[Operation]) -> list[Operation]:
    """Info writes/cas whose new value some kept op depends on, computed to a fixpoint.

    A value is *needed* if an ok read returned it, an ok cas expected it, or a kept info
    cas expected it (that cas may only take effect on top of it).
    """
    needed: set[Hashable] = {freeze(op.result) for op in ops if op.f == "read"}
    needed |= {_expected(op) for op in ops if op.f == "cas" and op.outcome == "ok"}
    pending = [op for op in ops if op.outcome == "info"]
    kept: list[Operation] = []
    grew = True
    while grew:
        grew = False
        for op in [op for op in pending if _written(op) in needed]:
            pending.remove(op)
            kept.append(op)
            if op.f == "cas":
                grew |= _expected(op) not in needed
                needed.add(_expected(op))
    return kept


def register_ops(ops: Iterable[Operation]) -> list[Operation]:
    """The ops that constrain a register, in their original order, before the search.

    Dropped: ``fail`` ops (never happened); ``info`` reads (observed nothing); ``info``
    writes/cas whose new value nothing needs (see :func:`_needed_info_ops`). The last is
    exact, not a heuristic: if such an op took effect, the stretch until the next write
    holds a value that no ok read returned and no successful cas required; deleting the op
    leaves a valid linearization (a kept info cas that saw that value was a no-op and can
    move to the end, which is always allowed for info ops). Conversely, a linearization
    without it stays valid with it placed last. It matters because every optional op
    multiplies the search space, and most indeterminate writes are never observed.
    """
    kept = [op for op in ops
            if op.outcome != "fail" and not (op.f == "read" and op.outcome == "info")]
    needed = {id(op) for op in _needed_info_ops(kept)}
    return [op for op in kept if op.outcome == "ok" or id(op) in needed]


def check_register_key(key: Key, ops: Sequence[Operation],
                       budget: float = DEFAULT_KEY_BUDGET) -> KeyResult:
    """Linearizability of one key's operations (already filtered by :func:`register_ops`)."""
    started = time.monotonic()
    failure = _Failure()
    try:
        ok = _wgl(ops, started + budget, failure)
    except _Timeout:
        return KeyResult(key, Verdict.UNKNOWN, len(ops), time.monotonic() - started,
                         f"search exceeded the {budget:g} s budget")
    elapsed = time.monotonic() - started
    if ok:
        return KeyResult(key, Verdict.VALID, len(ops), elapsed)
    text, involved = _explain(ops, failure)
    return KeyResult(key, Verdict.INVALID, len(ops), elapsed, text, involved)


def _key_order(key: Key) -> tuple[str, str]:
    return (type(key).__name__, str(key))


def check_register(ops: Sequence[Operation], budget: float = DEFAULT_KEY_BUDGET) -> list[KeyResult]:
    """Check each key on its own: linearizability is compositional (P-compositionality),
    and small per-key histories are what keeps the search tractable."""
    by_key: dict[Key, list[Operation]] = {}
    for op in register_ops(ops):
        by_key.setdefault(op.key, []).append(op)
    return [check_register_key(key, by_key[key], budget) for key in sorted(by_key, key=_key_order)]


# =========================================================================== set


@dataclass(frozen=True, slots=True)
class SetRead:
    """One final read that is missing acknowledged elements or shows impossible ones."""

    op: Operation
    lost: frozenset[Hashable]
    unexpected: frozenset[Hashable]


@dataclass(frozen=True, slots=True)
class SetResult:
    """Lost = acknowledged but absent from some read; unexpected = never (validly) attempted."""

    verdict: Verdict
    acknowledged: int
    reads: int
    lost: frozenset[Hashable]
    unexpected: frozenset[Hashable]
    bad_reads: tuple[SetRead, ...]
    problems: tuple[str, ...] = ()


def _first_attempts(adds: Iterable[Operation]) -> dict[Hashable, float]:
    """Earliest invocation of each element whose add may have happened (not ``fail``)."""
    first: dict[Hashable, float] = {}
    for op in adds:
        if op.outcome != "fail":
            element = freeze(op.value)
            first[element] = min(op.call, first.get(element, math.inf))
    return first


def _check_set_read(read: Operation, acked: dict[Hashable, float],
                    attempted: dict[Hashable, float]) -> SetRead | None:
    """An ack that completed before this read began must be visible; nothing may appear
    that was not attempted before the read returned."""
    if not isinstance(read.result, list):
        raise HistoryError(None, f"set read must return a list: {read.describe()}")
    seen = {freeze(item) for item in read.result}
    lost = {e for e, done in acked.items() if done < read.call and e not in seen}
    unexpected = {e for e in seen if attempted.get(e, math.inf) > read.ret}
    if not lost and not unexpected:
        return None
    return SetRead(read, frozenset(lost), frozenset(unexpected))


def check_set(ops: Sequence[Operation]) -> SetResult:
    """Check every successful read of the whole set (normally one per node after healing)."""
    adds = [op for op in ops if op.f == "add"]
    reads = [op for op in ops if op.f == "read" and op.outcome == "ok"]
    acked: dict[Hashable, float] = {}
    for op in adds:
        if op.outcome == "ok":
            element = freeze(op.value)
            acked[element] = min(op.ret, acked.get(element, math.inf))
    attempted = _first_attempts(adds)
    bad = [r for r in (_check_set_read(op, acked, attempted) for op in reads) if r is not None]
    problems = () if reads or not adds else ("no successful final read of the set",)
    lost = frozenset().union(*(r.lost for r in bad))
    unexpected = frozenset().union(*(r.unexpected for r in bad))
    verdict = Verdict.INVALID if bad or problems else Verdict.VALID
    return SetResult(verdict, len(acked), len(reads), lost, unexpected, tuple(bad), problems)


# =========================================================================== bank


@dataclass(frozen=True, slots=True)
class BankRead:
    """A read that broke an invariant: wrong total (torn / lost transfer) or overdraft."""

    op: Operation
    total: float
    negative: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BankResult:
    verdict: Verdict
    expected_total: float | None
    reads: int
    bad_reads: tuple[BankRead, ...]
    total_inferred: bool = False


def _balances(op: Operation) -> dict[str, float]:
    if not isinstance(op.result, dict):
        raise HistoryError(None, f"bank read must return {{account: balance}}: {op.describe()}")
    return {k: float(v) for k, v in op.result.items() if isinstance(v, (int, float))}


def check_bank(ops: Sequence[Operation], total: float | None = None,
               allow_negative: bool = False) -> BankResult:
    """Every successful read must see the conserved total and (unless allowed) no
    negative balance. Transfers themselves are not checked: only reads are observations.

    Without ``total`` the most common observed total is taken as the truth, so one torn
    read among many good ones is still the one reported.
    """
    reads = [(op, _balances(op)) for op in ops if op.f == "read" and op.outcome == "ok"]
    inferred = total is None
    if total is None and reads:
        total = Counter(sum(b.values()) for _, b in reads).most_common(1)[0][0]
    bad: list[BankRead] = []
    for op, balances in reads:
        sum_ = sum(balances.values())
        negative = () if allow_negative else tuple(sorted(a for a, v in balances.items() if v < 0))
        if not math.isclose(sum_, total or 0.0, abs_tol=1e-9) or negative:
            bad.append(BankRead(op, sum_, negative))
    verdict = Verdict.INVALID if bad else Verdict.VALID
    return BankResult(verdict, total, len(reads), tuple(bad), inferred and bool(reads))


# =========================================================================== report


@dataclass(frozen=True)
class Report:
    """What one history check found; ``valid`` is false for any violation *or* unknown."""

    workload: Workload
    ops: int
    registers: tuple[KeyResult, ...] = ()
    set_result: SetResult | None = None
    bank_result: BankResult | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def violations(self) -> int:
        """Invalid keys, bad set reads (or a missing final read), bad bank reads."""
        count = sum(1 for k in self.registers if k.verdict is Verdict.INVALID)
        if self.set_result is not None:
            count += len(self.set_result.bad_reads) + len(self.set_result.problems)
        if self.bank_result is not None:
            count += len(self.bank_result.bad_reads)
        return count

    @property
    def unknown(self) -> int:
        return sum(1 for k in self.registers if k.verdict is Verdict.UNKNOWN)

    @property
    def lost(self) -> int:
        return len(self.set_result.lost) if self.set_result is not None else 0

    @property
    def unexpected(self) -> int:
        return len(self.set_result.unexpected) if self.set_result is not None else 0

    @property
    def valid(self) -> bool:
        return self.violations == 0 and self.unknown == 0

    def counts(self) -> dict[str, int | bool | str]:
        """Flat counts for CLI output and run logs."""
        return {"workload": self.workload, "valid": self.valid, "ops": self.ops,
                "violations": self.violations, "lost": self.lost,
                "unexpected": self.unexpected, "unknown": self.unknown}

    def summary(self) -> str:
        """A few lines for a terminal: the counts, then one line per problem."""
        head = " ".join(f"{k}={v}" for k, v in self.counts().items())
        lines = [f"{'PASS' if self.valid else 'FAIL'} {head} ({self.seconds:.2f} s)"]
        lines += [f"  key {k.key!r}: {k.verdict.value}: {k.explanation}"
                  for k in self.registers if k.verdict is not Verdict.VALID]
        lines += self._set_lines() + self._bank_lines() + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _set_lines(self) -> list[str]:
        result = self.set_result
        if result is None:
            return []
        lines = [f"  {p}" for p in result.problems]
        for bad in result.bad_reads:
            lines.append(f"  read {bad.op.describe()}: lost {sorted(map(repr, bad.lost))} "
                         f"unexpected {sorted(map(repr, bad.unexpected))}")
        return lines

    def _bank_lines(self) -> list[str]:
        result = self.bank_result
        if result is None:
            return []
        return [f"  read {b.op.describe()}: total {b.total:g} != {result.expected_total}"
                + (f", negative {list(b.negative)}" if b.negative else "")
                for b in result.bad_reads]


def _as_operations(source: str | Path | Sequence[Operation] | Sequence[Event]) -> list[Operation]:
    """Accept a file, raw events or already-paired operations."""
    if isinstance(source, (str, Path)):
        return load_history(source)
    if source and isinstance(source[0], Event):
        return pair([e for e in source if isinstance(e, Event)])
    return [op for op in source if isinstance(op, Operation)]


def _validate_workload(ops: Sequence[Operation], workload: Workload) -> None:
    allowed = WORKLOAD_FUNCTIONS.get(workload)
    if allowed is None:
        raise ValueError(f"unknown workload {workload!r}")
    for op in ops:
        if op.f not in allowed:
            raise HistoryError(None, f"{workload} history contains a {op.f!r} op: {op.describe()}")


def check_history(source: str | Path | Sequence[Operation] | Sequence[Event],
                  workload: Workload, *, key_budget: float = DEFAULT_KEY_BUDGET,
                  bank_total: float | None = None, allow_negative: bool = False) -> Report:
    """Load (if needed), validate and check a history for the given workload."""
    started = time.monotonic()
    ops = _as_operations(source)
    _validate_workload(ops, workload)
    if workload == "register":
        keys = tuple(check_register(ops, key_budget))
        return Report(workload, len(ops), registers=keys, seconds=time.monotonic() - started)
    if workload == "set":
        return Report(workload, len(ops), set_result=check_set(ops),
                      seconds=time.monotonic() - started)
    bank = check_bank(ops, bank_total, allow_negative)
    notes = (f"expected total inferred from reads: {bank.expected_total}",) if bank.total_inferred else ()
    return Report(workload, len(ops), bank_result=bank, seconds=time.monotonic() - started,
                  notes=notes)
