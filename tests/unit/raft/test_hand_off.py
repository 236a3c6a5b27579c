"""Choosing whom to hand leadership to (`transfer_candidates`, `hand_off_leadership`): a leader
that should not lead (its disk is full) picks the target itself, then transfers as in
dissertation §3.10."""

from __future__ import annotations

from tests.unit.raft.harness import (
    NONE,
    Network,
    app_resp,
    drain,
    make_leader,
    new_core,
    of_type,
    take_msgs,
)
from zraft.raft import MsgType, RaftCore, Role


def leader_with_matches(matches: dict[int, int], voters: tuple[int, ...] = (1, 2, 3, 4, 5),
                        learners: tuple[int, ...] = (), **cfg: object) -> RaftCore:
    """Node 1 leading, with five entries after its no-op and each follower acknowledging up
    to the index given (0: never answered)."""
    core = new_core(1, voters, learners, pre_vote=False, **cfg)
    make_leader(core)
    for k in range(5):
        core.propose(b"p%d" % k)
    drain(core)
    for node, match in matches.items():
        if match:
            core.step(app_resp(node, 1, core.term, match))
    drain(core)
    return core


def test_candidates_ranked_most_up_to_date_first() -> None:
    """The best target is the voter with the most of the leader's log (highest match): it
    needs the fewest entries before it can get TimeoutNow. Ties go to the lower node id.
    Reference: dissertation §3.10"""
    core = leader_with_matches({2: 2, 3: 6, 4: 6, 5: 4})
    assert core.transfer_candidates() == [3, 4, 5, 2]


def test_candidates_exclude_self_learners_and_inactive_voters() -> None:
    """Only another voter that the leader heard from within the current election timeout
    (the check-quorum marks, dissertation §6.2) can take over: not the leader itself, not a
    learner however up to date, not a voter that went silent.
    Reference: dissertation §3.10, §6.2"""
    core = leader_with_matches({2: 3, 3: 6, 4: 5, 5: 6, 6: 6}, learners=(6,), check_quorum=True)
    assert 1 not in core.transfer_candidates() and 6 not in core.transfer_candidates()
    assert core.transfer_candidates() == [3, 5, 4, 2]
    for _ in range(core.config.election_tick):  # the check clears every mark
        core.tick()
    assert core.role == Role.LEADER
    assert core.transfer_candidates() == []
    for node in (2, 4, 6):
        core.step(app_resp(node, 1, core.term, 6))
    assert core.transfer_candidates() == [2, 4]


def test_hand_off_transfers_to_the_best_candidate() -> None:
    """hand_off_leadership starts a transfer to the first candidate: a caught-up target gets
    TimeoutNow at once, and proposals stop while the transfer runs.
    Reference: dissertation §3.10"""
    core = leader_with_matches({2: 2, 3: 6, 4: 6, 5: 4})
    assert core.hand_off_leadership() == 3
    assert core.lead_transferee == 3
    timeouts = of_type(take_msgs(core), MsgType.TIMEOUT_NOW)
    assert [m.to for m in timeouts] == [3]


def test_hand_off_rotates_on_repeated_calls() -> None:
    """If the chosen target does not take over (the transfer is abandoned after an election
    timeout), the next call tries the next candidate, wrapping around: a target that cannot
    take over either is not retried forever. The rotation is core state, so it is
    deterministic.
    Reference: dissertation §3.10"""
    core = leader_with_matches({2: 2, 3: 6, 4: 6, 5: 4}, check_quorum=False)
    chosen = []
    for _ in range(6):
        chosen.append(core.hand_off_leadership())
        for _ in range(core.config.election_tick):  # no one answers: the transfer is aborted
            core.tick()
        assert core.role == Role.LEADER and core.lead_transferee == NONE
    assert chosen == [3, 4, 5, 2, 3, 4]


def test_hand_off_waits_while_a_transfer_is_under_way() -> None:
    """A second call during a transfer changes nothing: it neither retargets the transfer
    nor moves the rotation on.
    Reference: dissertation §3.10"""
    core = leader_with_matches({2: 2, 3: 6, 4: 6, 5: 4}, check_quorum=False)
    assert core.hand_off_leadership() == 3
    take_msgs(core)
    assert core.hand_off_leadership() == NONE
    assert core.lead_transferee == 3 and not take_msgs(core)
    for _ in range(core.config.election_tick):
        core.tick()
    assert core.hand_off_leadership() == 4


def test_hand_off_is_a_no_op_on_a_follower_or_candidate() -> None:
    """Only a leader has followers to rank and leadership to give.
    Reference: dissertation §3.10"""
    follower = new_core(2)
    assert follower.transfer_candidates() == []
    assert follower.hand_off_leadership() == NONE
    assert not take_msgs(follower)
    candidate = new_core(1, pre_vote=False)
    candidate.campaign()
    drain(candidate)
    assert candidate.role == Role.CANDIDATE
    assert candidate.hand_off_leadership() == NONE
    assert not of_type(take_msgs(candidate), MsgType.TIMEOUT_NOW, MsgType.APP)


def test_hand_off_without_candidates_returns_none() -> None:
    """A single-voter leader, or one with only learners, has nobody to hand off to."""
    alone = new_core(1, voters=(1,), learners=(2,))
    make_leader(alone)
    assert alone.transfer_candidates() == []
    assert alone.hand_off_leadership() == NONE
    assert alone.lead_transferee == NONE
    assert alone.hand_off_round == 0


def test_hand_off_skips_a_target_that_cannot_take_over() -> None:
    """End to end: the first target cannot take writes either (it ignores TimeoutNow); after
    the transfer is abandoned, the next hand-off picks the other node, which wins.
    Reference: dissertation §3.10"""
    net = Network()
    leader = net.elect(1)
    net.propose(1, b"a")
    net.nodes[2].defer_campaign(True)
    assert leader.transfer_candidates() == [2, 3]  # equally up to date: by node id
    assert leader.hand_off_leadership() == 2
    net.deliver_all()
    assert net.leaders() == [1]
    net.tick(times=leader.config.election_tick)  # the first attempt is abandoned
    assert leader.lead_transferee == NONE
    assert leader.hand_off_leadership() == 3
    net.deliver_all()
    assert net.leaders() == [3]
    net.propose(3, b"b")
    assert net.applied_data(2) == [b"a", b"b"]
