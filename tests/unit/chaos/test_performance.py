"""Checking cost at the size the chaos suite uses: 10 keys x 500 ops, concurrency 5."""

from __future__ import annotations

import random
import time

from zraft.chaos.checker import check_history

from .gen import linearizable_history, ops_of


def test_ten_keys_of_500_ops_check_quickly(capsys):
    rng = random.Random(1)
    specs = [s for k in range(10) for s in linearizable_history(rng, 500, 5, key=f"k{k}", info_prob=0.05)]
    ops = ops_of(specs)
    started = time.monotonic()
    report = check_history(ops, "register", key_budget=10.0)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[chaos checker] 10 keys x 500 ops, concurrency 5: {elapsed:.2f} s")
    assert report.valid, report.summary()
    assert report.ops == 5000 and elapsed < 10.0
