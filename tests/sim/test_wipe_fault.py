"""The simulator's wipe fault: a node's data folder is emptied and it restarts with nothing but
its configuration. With blank-start recovery (RaftConfig.recover_blank) it asks every other
voter for its term and last log id before it votes, and every safety check holds; without it
(a planted bug) the wiped node votes as if it had never voted nor acknowledged anything, and
the checker catches a second leader in a term or a lost committed entry."""

from __future__ import annotations

import pytest

from zraft.sim.runner import run_seed
from zraft.sim.simulator import Simulation

STEPS = 2000


def test_a_wiped_node_voting_at_once_is_caught() -> None:
    """Three nodes: a wiped node is then part of every majority but one. (With five, where a
    single forgetful voter decides far less often, 1,500 seeds of the control found nothing;
    the safe runs below still cover five.)"""
    for seed in range(1500):
        result = run_seed(seed, STEPS, 3, check_liveness=False, damage=False, recover_blank=False)
        if result.violations:
            violation = result.violations[0]
            assert any(rule in violation for rule in ("election-safety", "leader-completeness",
                                                      "state-machine-safety", "apply")), violation
            return
    raise AssertionError("wiped nodes voting at once survived 1500 seeds")


@pytest.mark.parametrize("nodes", [3, 5])
def test_wiped_nodes_that_recover_first_are_safe_and_live(nodes: int) -> None:
    failures = []
    wipes = 0
    for seed in range(200):
        sim = Simulation(seed, nodes=nodes, damage=False)
        sim.run(STEPS)
        wipes += sim.wipe_count
        live = sim.heal_and_check_liveness() if not sim.checker.violations else True
        if sim.checker.violations or not live:
            failures.append((seed, [str(v) for v in sim.checker.violations[:2]], live))
    assert not failures, failures
    assert wipes > (40 if nodes == 3 else 15)  # the fault really is exercised
