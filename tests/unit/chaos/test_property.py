"""Property: the register checker accepts every recorded linearizable execution and
rejects it once a single read is made to return a value it could not have seen."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zraft.chaos.checker import Verdict, check_register
from zraft.chaos.history import write_events, load_history

from .gen import events_of, linearizable_history

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(seed=st.integers(0, 2**32), n=st.integers(1, 60), concurrency=st.integers(1, 6),
       info=st.sampled_from([0.0, 0.1, 0.3]))
def test_linearizable_executions_are_valid(seed, n, concurrency, info):
    specs = linearizable_history(random.Random(seed), n, concurrency, info_prob=info)
    for result in check_register(events_and_pair(specs)):
        assert result.verdict is Verdict.VALID, result.explanation


@SETTINGS
@given(seed=st.integers(0, 2**32), n=st.integers(2, 60), concurrency=st.integers(1, 6),
       pick=st.integers(0, 10**6), choice=st.integers(0, 10**6))
def test_one_impossible_read_makes_it_invalid(seed, n, concurrency, pick, choice):
    specs = linearizable_history(random.Random(seed), n, concurrency)
    reads = [s for s in specs if s.f == "read" and s.outcome == "ok"]
    assume(reads)
    victim = reads[pick % len(reads)]
    # Impossible values: one never written, or one first written after the read returned.
    future = [s.value if s.f == "write" else s.value[1] for s in specs
              if s.f in ("write", "cas") and s.call > victim.ret]
    candidates = ["never-written", *future]
    victim.result = candidates[choice % len(candidates)]
    (result,) = check_register(events_and_pair(specs))
    assert result.verdict is Verdict.INVALID


def test_round_trip_through_a_file(tmp_path):
    specs = linearizable_history(random.Random(7), 200, 5, info_prob=0.1)
    write_events(tmp_path / "h.jsonl", events_of(specs))
    (result,) = check_register(load_history(tmp_path / "h.jsonl"))
    assert result.verdict is Verdict.VALID


def events_and_pair(specs):
    from zraft.chaos.history import pair
    return pair(events_of(specs))


@SETTINGS
@given(seed=st.integers(0, 2**32), n=st.integers(2, 14), concurrency=st.integers(1, 4),
       info=st.sampled_from([0.2, 0.5]), mutate=st.floats(0, 0.3))
def test_pruning_unobserved_info_ops_never_changes_the_verdict(seed, n, concurrency, info, mutate):
    from zraft.chaos.checker import check_register_key, register_ops
    rng = random.Random(seed)
    specs = linearizable_history(rng, n, concurrency, info_prob=info)
    for s in specs:
        if s.f == "read" and s.outcome == "ok" and rng.random() < mutate:
            s.result = f"k-{rng.randint(0, n)}"
    ops = events_and_pair(specs)
    everything = [o for o in ops if o.outcome != "fail" and not (o.f == "read" and o.outcome == "info")]
    pruned = check_register_key("k", register_ops(ops)).verdict
    assert pruned is check_register_key("k", everything).verdict
