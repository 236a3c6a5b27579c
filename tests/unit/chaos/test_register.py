"""Register linearizability: the checker bites on real anomalies and passes legal histories."""

from __future__ import annotations

import pytest

from zraft.chaos.checker import Verdict, check_history, check_register
from zraft.chaos.history import write_events

from .gen import cas, events_of, ops_of, r, w


def verdict(specs, budget=5.0):
    results = check_register(ops_of(specs), budget)
    assert len(results) == 1
    return results[0]


VALID = {
    "sequential": [w(0, 1, 0, 1), r(1, 1, 2, 3)],
    "never written reads null": [r(0, None, 0, 1), w(1, 1, 2, 3)],
    "overlap read sees new": [w(0, 1, 0, 1), w(0, 2, 2, 5), r(1, 2, 3, 4)],
    "overlap read sees old": [w(0, 1, 0, 1), w(0, 2, 2, 5), r(1, 1, 3, 4)],
    "concurrent writes either order": [w(0, 1, 0, 4), w(1, 2, 0, 4), r(2, 1, 5, 6)],
    "concurrent writes other order": [w(0, 1, 0, 4), w(1, 2, 0, 4), r(2, 2, 5, 6)],
    "touching intervals count as concurrent": [w(0, 1, 0, 1), w(1, 2, 1, 2), r(2, 1, 2, 3)],
    "cas success": [w(0, 1, 0, 1), cas(1, 1, 2, 2, 3), r(0, 2, 4, 5)],
    "cas fail is ignored": [w(0, 1, 0, 1), cas(1, 7, 2, 2, 3, "fail"), r(0, 1, 4, 5)],
    "info write took effect": [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(0, 2, 10, 11)],
    "info write did not take effect": [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(0, 1, 10, 11)],
    "info write takes effect late": [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(0, 1, 10, 11),
                                     r(0, 2, 12, 13)],
    "never completed write": [w(0, 1, 0, 1), w(1, 2, 2, None), r(0, 2, 5, 6)],
    "info cas either way": [w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, "info"), r(0, 1, 4, 5),
                            cas(2, 9, 3, 6, 7, "info"), r(0, 2, 8, 9)],
    "fail write ignored": [w(0, 1, 0, 1), w(1, 2, 2, 3, "fail"), r(0, 1, 4, 5)],
    "info read ignored": [w(0, 1, 0, 1), r(1, None, 2, 3, "info"), r(0, 1, 4, 5)],
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_legal_histories_are_valid(name):
    result = verdict(VALID[name])
    assert result.verdict is Verdict.VALID, result.explanation


def test_stale_read_is_invalid():
    result = verdict([w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5)])
    assert result.verdict is Verdict.INVALID
    assert any(op.f == "read" and op.result == 1 for op in result.involved)
    assert "read 1" in result.explanation


def test_lost_write_is_invalid():
    specs = [w(0, "a", 0, 1), w(1, "b", 2, 3), r(2, "a", 4, 5), r(0, "a", 6, 7), r(1, "a", 8, 9)]
    result = verdict(specs)
    assert result.verdict is Verdict.INVALID
    assert any(op.f == "read" for op in result.involved)


def test_failed_write_is_not_visible():
    assert verdict([w(0, 1, 0, 1), w(1, 2, 2, 3, "fail"), r(0, 2, 4, 5)]).verdict is Verdict.INVALID


def test_info_write_cannot_take_effect_before_invoke():
    specs = [w(0, 1, 0, 1), r(1, 2, 2, 3), w(0, 2, 4, 5, "info")]
    assert verdict(specs).verdict is Verdict.INVALID


def test_info_write_cannot_flip_back():
    specs = [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(0, 2, 4, 5), r(0, 1, 6, 7)]
    assert verdict(specs).verdict is Verdict.INVALID


def test_successful_cas_on_wrong_value_is_invalid():
    assert verdict([w(0, 1, 0, 1), cas(1, 5, 2, 2, 3), r(0, 2, 4, 5)]).verdict is Verdict.INVALID


def test_keys_are_independent_and_file_input(tmp_path):
    specs = [w(0, 1, 0, 1, key="a"), r(1, 1, 2, 3, key="a"),
             w(2, 1, 0, 1, key="b"), w(2, 2, 2, 3, key="b"), r(3, 1, 4, 5, key="b")]
    path = tmp_path / "h.jsonl"
    write_events(path, events_of(specs))
    report = check_history(path, "register")
    assert [(k.key, k.verdict) for k in report.registers] == [("a", Verdict.VALID), ("b", Verdict.INVALID)]
    assert not report.valid and report.violations == 1 and report.ops == 5
    assert "FAIL" in report.summary() and "'b'" in report.summary()


def test_budget_exceeded_is_unknown_and_fails():
    # 24 concurrent info writes, each observed by one of 24 concurrent reads, then a read
    # no configuration explains: refuting it means visiting every subset (> 2^24 states).
    n = 24
    specs = ([w(i, i, 0, 1, "info") for i in range(n)] + [r(100 + i, i, 2, 3) for i in range(n)]
             + [r(99, "never", 4, 5)])
    report = check_history(ops_of(specs), "register", key_budget=0.2)
    (key,) = report.registers
    assert key.verdict is Verdict.UNKNOWN
    assert report.unknown == 1 and report.violations == 0 and not report.valid
    assert "unknown=1" in report.summary()


def test_unobserved_info_writes_are_pruned_without_changing_verdicts():
    from zraft.chaos.checker import register_ops
    specs = [w(i, i, 0, 1, "info") for i in range(30)] + [r(99, 3, 2, 3), r(99, "never", 4, 5)]
    ops = ops_of(specs)
    assert len(register_ops(ops)) == 3  # the observed info write and the two reads
    assert check_history(ops, "register", key_budget=5).registers[0].verdict is Verdict.INVALID
    assert check_history(ops[:-1], "register", key_budget=5).valid


def test_wrong_workload_op_is_rejected():
    from zraft.chaos.history import HistoryError
    with pytest.raises(HistoryError):
        check_history(ops_of([w(0, 1, 0, 1)]), "set")
