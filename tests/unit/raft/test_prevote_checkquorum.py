"""Pre-vote (dissertation §9.6) and check-quorum / leader lease (dissertation §6.2, §4.2.3)."""

from __future__ import annotations

from tests.unit.raft.harness import (
    NONE,
    Network,
    drain,
    ents,
    new_core,
    of_type,
    take_msgs,
    vote,
)
from zraft.raft import HardState, Message, MsgType, Role

PREVOTE = dict(pre_vote=True, check_quorum=False)
CQ = dict(pre_vote=False, check_quorum=True)


def test_precandidate_keeps_term_and_vote() -> None:
    """In the pre-vote phase a candidate first asks whether it could win, without incrementing
    its term or changing its vote; its PreVote requests carry the term it would use (term + 1).
    Reference: dissertation §9.6"""
    core = new_core(1, entries=ents(1, 1), hard_state=HardState(term=1, vote=2), **PREVOTE)
    drain(core)
    core.campaign()
    assert core.role == Role.PRE_CANDIDATE
    assert (core.term, core.vote) == (1, 2)
    rd = drain(core)
    assert rd.hard_state is None
    pre = of_type(list(rd.messages) + list(rd.messages_after_persist), MsgType.PRE_VOTE)
    assert sorted(m.to for m in pre) == [2, 3]
    assert all((m.term, m.index, m.log_term) == (2, 2, 1) for m in pre)


def test_precandidate_with_majority_starts_real_election() -> None:
    """Only once a pre-candidate learns that a majority would vote for it does it increment its
    term and start a normal election.
    Reference: dissertation §9.6"""
    core = new_core(1, **PREVOTE)
    core.campaign()
    drain(core)
    core.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=1))
    assert core.role == Role.CANDIDATE
    assert (core.term, core.vote) == (1, 1)
    votes = of_type(take_msgs(core), MsgType.VOTE)
    assert sorted(m.to for m in votes) == [2, 3] and all(m.term == 1 for m in votes)


def test_precandidate_rejected_by_majority_returns_to_follower_same_term() -> None:
    """A pre-candidate refused by a majority gives up without having changed its term.
    Reference: dissertation §9.6"""
    core = new_core(1, hard_state=HardState(term=4), **PREVOTE)
    core.campaign()
    drain(core)
    core.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=4, reject=True))
    core.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=3, term=4, reject=True))
    assert core.role == Role.FOLLOWER
    assert core.term == 4


def test_prevote_grant_changes_nothing_on_the_voter() -> None:
    """A server answering a PreVote request neither adopts the (hypothetical) term nor records a
    vote: the request only asks whether it would vote; a PreVote from a less up-to-date log is
    refused as a RequestVote would be.
    Reference: dissertation §9.6"""
    core = new_core(2, entries=ents(1, 2), hard_state=HardState(term=2), **PREVOTE)
    drain(core)
    core.step(vote(1, 2, term=3, index=2, log_term=2, pre=True))
    core.step(vote(3, 2, term=3, index=5, log_term=1, pre=True))
    resps = of_type(take_msgs(core), MsgType.PRE_VOTE_RESP)
    assert [(m.to, m.reject) for m in resps] == [(1, False), (3, True)]
    assert (core.term, core.vote, core.role) == (2, NONE, Role.FOLLOWER)


def test_partitioned_node_rejoins_without_bumping_the_term() -> None:
    """A server partitioned from the cluster keeps timing out, but with pre-vote it never wins a
    pre-vote round, so its term does not grow; when it rejoins, it does not force the cluster
    to a higher term nor depose the leader.
    Reference: dissertation §9.6"""
    net = Network(pre_vote=True, check_quorum=True)
    net.elect(1)
    net.propose(1, b"x")
    term = net.nodes[1].term
    net.isolate(3)
    for _ in range(10 * net.nodes[3].config.election_tick):
        net.tick()
    assert net.nodes[3].term == term
    assert net.nodes[3].role == Role.PRE_CANDIDATE
    net.heal()
    for _ in range(30):
        net.tick()
    assert net.leaders() == [1]
    assert {c.term for c in net.nodes.values()} == {term}
    assert net.nodes[3].role == Role.FOLLOWER and net.nodes[3].leader == 1
    net.propose(1, b"y")
    assert net.applied_data(3) == [b"x", b"y"]


def test_without_prevote_a_rejoining_node_disrupts_the_cluster() -> None:
    """Contrast for the pre-vote rule: without it, the partitioned server increments its term on
    every timeout and, on rejoining, forces the leader to step down to that term.
    Reference: dissertation §9.6"""
    net = Network(pre_vote=False, check_quorum=False)
    net.elect(1)
    net.isolate(3)
    for _ in range(50):
        net.tick()
    assert net.nodes[3].term > 2
    stale_term = net.nodes[3].term
    net.heal()
    for _ in range(30):
        net.tick()
    assert net.nodes[1].term >= stale_term > 1


def test_isolated_leader_steps_down_after_election_timeout() -> None:
    """With check-quorum, a leader steps down if an election timeout elapses without a
    successful round of heartbeats to a majority of its cluster (checked once per election
    timeout, so at most two timeouts after it last heard from the majority).
    Reference: dissertation §6.2"""
    net = Network(**CQ)
    leader = net.elect(1)
    election_tick = leader.config.election_tick
    for _ in range(5 * election_tick):
        net.tick()
    assert leader.role == Role.LEADER
    net.isolate(1)
    for _ in range(2 * election_tick):
        net.tick([1])
    assert leader.role == Role.FOLLOWER
    assert leader.leader == NONE


def test_leader_with_majority_stays_leader() -> None:
    """Check-quorum only deposes a leader that lost the majority: a leader still in contact with
    a majority keeps its leadership when a minority is unreachable.
    Reference: dissertation §6.2"""
    net = Network(voters=(1, 2, 3, 4, 5), **CQ)
    leader = net.elect(1)
    net.isolate(4)
    net.isolate(5)
    for _ in range(10 * leader.config.election_tick):
        net.tick([1, 2, 3])
    assert leader.role == Role.LEADER
    net.propose(1, b"ok")
    assert net.applied_data(2) == [b"ok"]


def test_follower_in_lease_ignores_vote_requests() -> None:
    """A server that heard from a current leader within the minimum election timeout neither
    updates its term nor grants its vote when it receives a RequestVote (leader lease, which
    keeps removed or partitioned servers from disrupting a healthy cluster).
    Reference: dissertation §6.2"""
    net = Network(**CQ)
    net.elect(1)
    follower = net.nodes[2]
    last = net.nodes[3].log
    follower.step(vote(3, 2, term=5, index=last.last_index(), log_term=last.last_term()))
    assert (follower.term, follower.vote, follower.leader) == (1, 1, 1)
    assert not of_type(take_msgs(follower), MsgType.VOTE_RESP)


def test_follower_votes_again_once_lease_expired() -> None:
    """The lease lasts one election timeout: a follower that has not heard from the leader for
    that long treats vote requests normally again.
    Reference: dissertation §6.2"""
    net = Network(**CQ)
    net.elect(1)
    follower = net.nodes[2]
    for _ in range(follower.config.election_tick):
        follower.tick()
    last = net.nodes[3].log
    follower.step(vote(3, 2, term=5, index=last.last_index(), log_term=last.last_term()))
    assert (follower.term, follower.vote) == (5, 3)
    resps = of_type(take_msgs(follower), MsgType.VOTE_RESP)
    assert [(m.to, m.reject) for m in resps] == [(3, False)]
