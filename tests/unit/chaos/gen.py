"""History builders shared by the chaos checker tests."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from zraft.chaos.history import Event, Operation, pair


@dataclass
class Spec:
    """One operation as a test writes it; ret None = never completed."""

    process: object
    f: str
    value: object
    call: float
    ret: float | None
    outcome: str = "ok"
    result: object = None
    key: object = "k"


def events_of(specs: list[Spec]) -> list[Event]:
    """Specs -> real-time ordered events; completions sort before invocations at a tie."""
    raw: list[tuple[float, int, int, Event]] = []
    for i, s in enumerate(specs):
        raw.append((s.call, 1, i, Event(s.process, "invoke", s.f, s.key, s.value, s.call)))
        if s.ret is not None:
            done = s.result if s.f == "read" else s.value
            raw.append((s.ret, 0, i, Event(s.process, s.outcome, s.f, s.key, done, s.ret)))
    raw.sort(key=lambda r: r[:3])
    return [r[3] for r in raw]


def ops_of(specs: list[Spec]) -> list[Operation]:
    return pair(events_of(specs))


def w(p, v, call, ret, outcome="ok", key="k"):
    return Spec(p, "write", v, call, ret, outcome, None, key)


def r(p, result, call, ret, outcome="ok", key="k"):
    return Spec(p, "read", None, call, ret, outcome, result, key)


def cas(p, expected, new, call, ret, outcome="ok", key="k"):
    return Spec(p, "cas", [expected, new], call, ret, outcome, None, key)


def linearizable_history(rng: random.Random, n_ops: int, concurrency: int, key: object = "k",
                         info_prob: float = 0.05) -> list[Spec]:
    """A true linearizable execution of a register, recorded with realistic overlap.

    Each process runs ops back to back with random gaps and durations; each op takes
    effect at a random instant inside its interval; ops are applied to a sequential
    register in the order of those instants. Some writes/cas end as ``info``, and of
    those some really took effect and some did not.
    """
    clock = [rng.uniform(0, 1) for _ in range(concurrency)]
    drafts: list[tuple[float, Spec]] = []
    for i in range(n_ops):
        p = i % concurrency
        call = clock[p] + rng.uniform(0, 0.5)
        ret = call + rng.uniform(0.01, 3.0)
        clock[p] = ret
        f = rng.choice(["read", "read", "write", "cas"])
        drafts.append((rng.uniform(call, ret), Spec(f"{key}:{p}", f, None, call, ret, key=key)))
    drafts.sort(key=lambda d: d[0])
    state: object = None
    fresh = 0
    for _, spec in drafts:
        state, fresh = _apply(rng, spec, state, fresh, info_prob)
    return [s for _, s in drafts]


def _apply(rng: random.Random, spec: Spec, state: object, fresh: int,
           info_prob: float) -> tuple[object, int]:
    """Run one op on the sequential register and fill in its recorded outcome."""
    if spec.f == "read":
        spec.result = state
        return state, fresh
    fresh += 1
    new = f"{spec.key}-{fresh}"
    info = rng.random() < info_prob
    if spec.f == "write":
        spec.value = new
        took = not info or rng.random() < 0.5
        spec.outcome = "info" if info else "ok"
        return (new if took else state), fresh
    expected = state if rng.random() < 0.6 else f"{spec.key}-{rng.randint(0, fresh)}"
    spec.value = [expected, new]
    matches = expected == state
    took = matches and (not info or rng.random() < 0.5)
    spec.outcome = "info" if info else ("ok" if matches else "fail")
    return (new if took else state), fresh


def max_ret(specs: list[Spec]) -> float:
    return max((s.ret for s in specs if s.ret is not None), default=math.inf)
