"""The simulator's damage fault: a node's synced log is cut short at a random index and the
node restarts with a vote floor at the last log id it had (what the raft process's salvage
does). With the floor, every safety check holds; the same fault without it (a planted bug) is
caught, which shows that the floor is what keeps it safe."""

from __future__ import annotations

import pytest

from zraft.sim.runner import run_seed
from zraft.sim.simulator import Simulation

STEPS = 5000


@pytest.mark.parametrize("nodes", [3, 5])
def test_damage_without_the_vote_floor_is_caught(nodes: int) -> None:
    for seed in range(1500):
        result = run_seed(seed, STEPS, nodes, check_liveness=False, vote_floor=False)
        if result.violations:
            violation = result.violations[0]
            assert any(rule in violation for rule in ("leader-completeness", "state-machine-safety",
                                                      "apply", "linearizable-read")), violation
            return
    raise AssertionError("losing acknowledged entries without a vote floor survived 1500 seeds")


@pytest.mark.parametrize("nodes", [3, 5])
def test_damage_with_the_vote_floor_is_safe_and_live(nodes: int) -> None:
    failures = []
    damages = 0
    for seed in range(150):
        sim = Simulation(seed, nodes=nodes)
        sim.run(STEPS)
        damages += sim.damage_count
        live = sim.heal_and_check_liveness() if not sim.checker.violations else True
        if sim.checker.violations or not live:
            failures.append((seed, [str(v) for v in sim.checker.violations[:2]], live))
    assert not failures, failures
    assert damages > 75  # the fault really is exercised
