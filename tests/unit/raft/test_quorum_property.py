"""Property test of the leader's commit rule against a naive reference (Figure 2, Rules for
Servers, Leaders): "If there exists an N such that N > commitIndex, a majority of matchIndex[i]
>= N, and log[N].term == currentTerm: set commitIndex = N"."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.raft.harness import drain, ents, make_leader, new_core
from zraft.raft import HardState, Role


def naive_commit(core, matches: dict[int, int], committed: int) -> int:
    """The largest N > committed held by a majority of voters whose term is the leader's term;
    learners never count. Falls back to `committed`."""
    voters = core.conf.voters
    majority = len(voters) // 2 + 1
    best = committed
    for n in range(committed + 1, core.log.last_index() + 1):
        holders = sum(1 for v in voters if matches.get(v, 0) >= n)
        if holders >= majority and core.log.term(n) == core.term:
            best = n
    return best


@st.composite
def leaders(draw):
    n_voters = draw(st.integers(min_value=1, max_value=7))
    n_learners = draw(st.integers(min_value=0, max_value=2))
    voters = tuple(range(1, n_voters + 1))
    learners = tuple(range(n_voters + 1, n_voters + n_learners + 1))
    prior_terms = sorted(draw(st.lists(st.integers(min_value=1, max_value=4), max_size=10)))
    commit = draw(st.integers(min_value=0, max_value=len(prior_terms)))
    term = prior_terms[-1] if prior_terms else 0
    core = new_core(1, voters, learners, entries=ents(*prior_terms),
                    hard_state=HardState(term=term, commit=commit), pre_vote=False, check_quorum=False)
    make_leader(core)
    for k in range(draw(st.integers(min_value=0, max_value=4))):
        core.propose(b"x%d" % k)
    drain(core)
    last = core.log.last_index()
    matches = {node: draw(st.integers(min_value=0, max_value=last), label=f"match[{node}]")
               for node in voters + learners}
    return core, matches


@settings(max_examples=300, deadline=None, derandomize=True)
@given(leaders())
def test_leader_commit_index_matches_naive_reference(case) -> None:
    """A leader sets its commit index to the largest index replicated on a majority of voters
    whose entry is of its current term (never counting learners, never going backwards).
    Reference: §5.4.2"""
    core, matches = case
    assert core.role == Role.LEADER
    before = core.log.committed
    for node, match in matches.items():
        core.progress[node].match = match
    expected = naive_commit(core, matches, before)
    changed = core._maybe_commit()
    assert core.log.committed == expected
    assert changed == (expected > before)
