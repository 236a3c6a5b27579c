"""Fault names, groups and source pinning: the parts of the nemesis that need no root."""

from __future__ import annotations

import pytest

from zraft.chaos.nemesis import ALL_FAULTS, expand
from zraft.chaos.runner import ChaosOptions
from zraft.transport.sockets import from_own_address


def test_groups_expand_in_order_without_duplicates():
    assert expand(["partition"]) == ("partition-halves", "partition-leader", "partition-bridge",
                                     "partition-asym")
    assert expand(["kill", "all"])[0] == "kill"
    assert set(expand(["all"])) == set(ALL_FAULTS)
    assert len(expand(["kill", "kill"])) == 1
    assert expand(["membership"]) == ("transfer", "restart") and "restart" in expand(["all"])


def test_a_five_node_run_puts_each_node_on_its_own_address():
    assert ChaosOptions(nodes=5, first_host=10).hosts == [f"127.0.0.{n}" for n in range(10, 15)]
    assert len(ChaosOptions().hosts) == 3


def test_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown fault 'netem'"):
        expand(["netem"])


@pytest.mark.parametrize("destination,own,expected", [
    ("tcp://127.0.0.3:4403", "tcp://127.0.0.2:4402", "tcp://127.0.0.2:0;127.0.0.3:4403"),
    ("tcp://10.0.0.7:4002", "tcp://10.0.0.5:4002", "tcp://10.0.0.5:0;10.0.0.7:4002"),
    # no specific own address: let the kernel choose
    ("tcp://127.0.0.3:4403", "tcp://0.0.0.0:4402", "tcp://127.0.0.3:4403"),
    ("tcp://127.0.0.3:4403", "tcp://node1.example:4402", "tcp://127.0.0.3:4403"),
    ("tcp://127.0.0.3:4403", "", "tcp://127.0.0.3:4403"),
    # not tcp, or already pinned: unchanged
    ("ipc:///run/zraft/raft.sock", "tcp://127.0.0.2:4402", "ipc:///run/zraft/raft.sock"),
    ("tcp://127.0.0.9:0;127.0.0.3:4403", "tcp://127.0.0.2:4402", "tcp://127.0.0.9:0;127.0.0.3:4403"),
])
def test_source_pinning(destination, own, expected):
    assert from_own_address(destination, own) == expected


class FakeFirewall:
    def __init__(self) -> None:
        self.rules: list[tuple[str, str, float]] = []

    def drop(self, source: str, destination: str, probability: float = 1.0) -> None:
        self.rules.append((source, destination, probability))

    def dropped_packets(self) -> int:
        return 7 if self.rules else 0

    def heal(self) -> None:
        self.rules.clear()


class FakeTarget:
    hosts = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

    def __init__(self) -> None:
        self.table = {(1, "raft"): 100, (1, "store"): 101, (2, "raft"): 200}

    def pids(self):
        return dict(self.table)

    def leader(self):
        return 1


def _nemesis(target):
    import random

    from zraft.chaos.nemesis import Nemesis

    return Nemesis(target, FakeFirewall(), random.Random(3))  # type: ignore[arg-type]


def test_a_crash_under_a_fault_that_kills_nothing_is_a_problem():
    target = FakeTarget()
    nemesis = _nemesis(target)
    nemesis.start("loss")
    target.table[(1, "store")] = 555  # supervisord restarted a crashed store
    injection = nemesis.heal()
    assert injection.fired and "7 packets" in injection.evidence
    assert injection.problem == "process(es) restarted or gone under loss: node1-store"


def test_no_problem_when_every_process_kept_its_pid():
    target = FakeTarget()
    nemesis = _nemesis(target)
    nemesis.start("partition-leader")
    injection = nemesis.heal()
    assert injection.detail == "leader 127.0.0.2 isolated"
    assert injection.fired and injection.problem == ""


class ClockTarget(FakeTarget):
    """A node whose wall clock runs at `rate` from the moment a spec is set, with one jump
    (a restarted process) after `jump_after` readings."""

    def __init__(self, rate: float, jump_after: int = 3) -> None:
        super().__init__()
        self.rate, self.jump_after, self.reads = rate, jump_after, 0
        self.since: float | None = None

    def set_clock(self, node, spec):
        import time

        self.since = time.time() if spec != "+0" else None

    def node_time(self, node):
        import time

        now = time.time()
        self.reads += 1
        if self.since is None:
            return now
        jump = 40.0 if self.reads > self.jump_after else 0.0
        return self.since - 10.0 + (now - self.since) * self.rate + jump


class RateRandom:
    """Steers the nemesis to a clock-rate fault of x0.5 on node 1."""

    def random(self):
        return 0.9

    def randrange(self, *_):
        return 1

    def choice(self, options):
        return options[0]


def _clock_run(target) -> "object":
    import time

    from zraft.chaos.nemesis import Nemesis

    nemesis = Nemesis(target, FakeFirewall(), RateRandom())  # type: ignore[arg-type]
    nemesis.start("clock")
    for _ in range(11):
        nemesis.observe()
        time.sleep(0.3)
    return nemesis.heal()


def test_clock_rate_is_proven_by_a_clean_window_despite_a_jump():
    injection = _clock_run(ClockTarget(rate=0.5))
    assert injection.fired, injection.evidence
    assert "ran x0.5" in injection.evidence


def test_clock_rate_not_seen_is_not_proof():
    injection = _clock_run(ClockTarget(rate=1.0))
    assert not injection.fired
    assert "no window" in injection.evidence
