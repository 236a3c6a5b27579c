"""Set and bank checkers: lost and unexpected elements, torn and overdrawn reads."""

from __future__ import annotations

from zraft.chaos.checker import Verdict, check_history

from .gen import Spec, ops_of


def add(p, e, call, ret, outcome="ok"):
    return Spec(p, "add", e, call, ret, outcome, None, None)


def read(p, value, call, ret, node="n1"):
    return Spec(p, "read", None, call, ret, "ok", value, node)


def transfer(p, src, dst, amount, call, ret, outcome="ok"):
    return Spec(p, "transfer", {"from": src, "to": dst, "amount": amount}, call, ret, outcome, None, None)


ADDS = [add(0, 1, 0, 1), add(1, 2, 0, 1), add(2, 3, 2, 3, "info"), add(0, 4, 2, 3, "fail")]


def test_set_valid_with_and_without_info_element():
    finals = [read(5, [1, 2, 3], 10, 11, "n1"), read(6, [2, 1], 10, 11, "n2")]
    report = check_history(ops_of(ADDS + finals), "set")
    assert report.valid, report.summary()
    assert report.set_result is not None and report.set_result.acknowledged == 2


def test_set_lost_acknowledged_element():
    finals = [read(5, [1, 2], 10, 11, "n1"), read(6, [2], 10, 11, "n2")]
    report = check_history(ops_of(ADDS + finals), "set")
    assert not report.valid and report.lost == 1 and report.violations == 1
    assert report.set_result is not None and report.set_result.lost == {1}
    assert report.set_result.bad_reads[0].op.key == "n2"


def test_set_unexpected_elements():
    # 9 was never attempted; 4's add failed definitely, so it must be absent too.
    report = check_history(ops_of(ADDS + [read(5, [1, 2, 9, 4], 10, 11)]), "set")
    assert report.set_result is not None and report.set_result.unexpected == {9, 4}
    assert report.unexpected == 2 and not report.valid


def test_set_element_read_before_it_was_attempted():
    specs = [read(5, [7], 0, 1), add(0, 7, 2, 3)]
    assert check_history(ops_of(specs), "set").unexpected == 1


def test_set_ack_after_read_began_is_not_required():
    specs = [add(0, 7, 0, 5), read(5, [], 1, 2)]
    assert check_history(ops_of(specs), "set").valid


def test_set_without_final_read_fails():
    report = check_history(ops_of(ADDS), "set")
    assert not report.valid and "no successful final read" in report.summary()


def bank_read(p, balances, call, ret):
    return Spec(p, "read", None, call, ret, "ok", balances, None)


TRANSFERS = [transfer(0, "a", "b", 5, 0, 1), transfer(1, "b", "a", 2, 0, 2, "info")]


def test_bank_consistent_reads_are_valid():
    reads = [bank_read(2, {"a": 10, "b": 10}, 0, 1), bank_read(3, {"a": 5, "b": 15}, 1, 2)]
    report = check_history(ops_of(TRANSFERS + reads), "bank", bank_total=20)
    assert report.valid, report.summary()


def test_bank_torn_transaction_is_invalid():
    reads = [bank_read(2, {"a": 10, "b": 10}, 0, 1), bank_read(3, {"a": 5, "b": 10}, 1, 2),
             bank_read(4, {"a": 5, "b": 15}, 2, 3)]
    report = check_history(ops_of(TRANSFERS + reads), "bank", bank_total=20)
    assert not report.valid and report.violations == 1
    assert report.bank_result is not None and report.bank_result.bad_reads[0].total == 15
    # Without a given total the majority total is assumed, and the torn read still stands out.
    inferred = check_history(ops_of(TRANSFERS + reads), "bank")
    assert inferred.violations == 1 and "inferred" in inferred.summary()


def test_bank_negative_balance():
    reads = [bank_read(2, {"a": -1, "b": 21}, 0, 1)]
    assert check_history(ops_of(reads), "bank", bank_total=20).violations == 1
    assert check_history(ops_of(reads), "bank", bank_total=20, allow_negative=True).valid
