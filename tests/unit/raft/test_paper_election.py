"""Leader election and terms (Raft paper §5.1, §5.2), one test per rule.

Each test drives a single core with hand-made messages (as etcd's raft_paper_test.go does) or a
small Network, and asserts on what the core emits. pre_vote is off where the rule under test is
the paper's plain election; check_quorum is off where a leader lease would mask the rule.
"""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import (
    NONE,
    Network,
    all_msgs,
    app,
    drain,
    ents,
    make_leader,
    new_core,
    of_type,
    take_msgs,
    vote,
)
from zraft.raft import HardState, Message, MsgType, RaftCore, Role

PLAIN = dict(pre_vote=False, check_quorum=False)


def _candidate(node_id: int = 1, voters=(1, 2, 3), **cfg) -> RaftCore:
    core = new_core(node_id, voters, **{**PLAIN, **cfg})
    core.campaign()
    drain(core)
    assert core.role == Role.CANDIDATE
    return core


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
@pytest.mark.parametrize("mtype", [MsgType.APP, MsgType.HEARTBEAT, MsgType.VOTE])
def test_higher_term_message_makes_node_follower(role: str, mtype: MsgType) -> None:
    """If one server's current term is smaller than the other's, it updates its current term to
    the larger value. If a candidate or leader discovers that its term is out of date, it
    immediately reverts to follower state.
    Reference: §5.1"""
    core = new_core(1, **PLAIN)
    if role == "candidate":
        core.campaign()
    elif role == "leader":
        make_leader(core)
    drain(core)
    old_term = core.term
    new_term = old_term + 3
    core.step(Message(mtype, to=1, frm=2, term=new_term))
    assert core.term == new_term
    assert core.role == Role.FOLLOWER
    if mtype in (MsgType.APP, MsgType.HEARTBEAT):
        assert core.leader == 2
    else:
        assert core.leader == NONE


def test_stale_term_message_is_ignored() -> None:
    """If a server receives a request with a stale term number, it rejects the request: a vote
    request from an older term gets no vote, and a heartbeat from an older term neither changes
    the known leader nor advances the commit index.
    Reference: §5.1"""
    core = new_core(1, entries=ents(1, 2, 3), hard_state=HardState(term=3, commit=0), **PLAIN)
    drain(core)
    core.step(vote(2, 1, term=2, index=10, log_term=3))
    assert core.vote == NONE and core.term == 3
    assert not [m for m in take_msgs(core) if m.type == MsgType.VOTE_RESP and not m.reject]
    core.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=2, commit=3))
    assert core.leader == NONE
    assert core.log.committed == 0
    assert core.term == 3 and core.role == Role.FOLLOWER


def test_stale_leader_append_is_answered_so_it_steps_down() -> None:
    """A server that receives AppendEntries from a stale term answers with its own, newer term;
    the stale leader then discovers that its term is out of date and reverts to follower.
    Reference: §5.1"""
    stale = new_core(1, **PLAIN)
    apps = of_type(all_msgs(make_leader(stale)), MsgType.APP)
    assert stale.role == Role.LEADER and stale.term == 1
    assert apps
    newer = new_core(2, hard_state=HardState(term=5), **PLAIN)
    newer.step(apps[0])
    replies = take_msgs(newer)
    assert newer.term == 5 and newer.log.last_index() == 0
    answers = of_type(replies, MsgType.APP_RESP)
    assert len(answers) == 1 and answers[0].to == 1 and answers[0].term == 5
    stale.step(answers[0])
    assert stale.role == Role.FOLLOWER
    assert stale.term == 5


def test_node_starts_as_follower() -> None:
    """When servers start up, they begin as followers.
    Reference: §5.2"""
    core = new_core(1)
    assert core.role == Role.FOLLOWER
    assert core.term == 0 and core.vote == NONE and core.leader == NONE


def test_leader_sends_heartbeats_every_heartbeat_tick() -> None:
    """Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries) to all
    followers in order to maintain their authority.
    Reference: §5.2"""
    core = new_core(1, heartbeat_tick=2, **PLAIN)
    make_leader(core)
    core.tick()
    assert not of_type(take_msgs(core), MsgType.HEARTBEAT)
    core.tick()
    beats = of_type(take_msgs(core), MsgType.HEARTBEAT)
    assert sorted(m.to for m in beats) == [2, 3]
    assert all(m.term == core.term and not m.entries for m in beats)


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_election_timeout_starts_election(role: str) -> None:
    """If a follower receives no communication over a period of time called the election
    timeout, it begins an election: it increments its current term, transitions to candidate,
    votes for itself and issues RequestVote RPCs in parallel to each of the other servers. A
    candidate whose election times out likewise starts a new election by incrementing its term.
    Reference: §5.2"""
    core = new_core(1, entries=ents(1, 1), hard_state=HardState(term=1), **PLAIN)
    if role == "candidate":
        core.campaign()
    drain(core)
    term_before = core.term
    for _ in range(2 * core.config.election_tick):
        core.tick()
    assert core.role == Role.CANDIDATE
    assert core.term == term_before + 1
    assert core.vote == 1
    votes = of_type(take_msgs(core), MsgType.VOTE)
    assert sorted(m.to for m in votes) == [2, 3]
    assert all(m.term == core.term and m.index == 2 and m.log_term == 1 for m in votes)


@pytest.mark.parametrize(
    ("size", "grants", "rejects", "expected"),
    [
        (1, (), (), Role.LEADER),
        (3, (2, 3), (), Role.LEADER),
        (3, (2,), (), Role.LEADER),
        (5, (2, 3, 4, 5), (), Role.LEADER),
        (5, (2, 3, 4), (), Role.LEADER),
        (5, (2, 3), (), Role.LEADER),
        (3, (), (2, 3), Role.FOLLOWER),
        (5, (2,), (3, 4, 5), Role.FOLLOWER),
        (5, (2,), (3,), Role.CANDIDATE),
        (5, (), (), Role.CANDIDATE),
    ],
)
def test_candidate_wins_with_majority(size: int, grants, rejects, expected: Role) -> None:
    """A candidate wins an election if it receives votes from a majority of the servers in the
    full cluster for the same term; once a majority has refused, it cannot win and reverts to
    follower; otherwise it remains a candidate.
    Reference: §5.2"""
    voters = tuple(range(1, size + 1))
    core = new_core(1, voters, **PLAIN)
    core.campaign()
    for v in grants:
        core.step(Message(MsgType.VOTE_RESP, to=1, frm=v, term=core.term))
    for v in rejects:
        core.step(Message(MsgType.VOTE_RESP, to=1, frm=v, term=core.term, reject=True))
    assert core.role == expected
    assert core.term == 1


def test_votes_from_non_members_are_not_counted() -> None:
    """Only votes from servers in the configuration count toward the majority a candidate needs.
    Reference: §5.2"""
    core = _candidate(1, (1, 2, 3))
    for stranger in (7, 8, 9):
        core.step(Message(MsgType.VOTE_RESP, to=1, frm=stranger, term=core.term))
    assert core.role == Role.CANDIDATE
    core.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=core.term))
    assert core.role == Role.LEADER


def test_one_vote_per_term_first_come_first_served() -> None:
    """Each server will vote for at most one candidate in a given term, on a first-come-first-
    served basis; a repeated request from the candidate it already voted for is granted again.
    Reference: §5.2"""
    core = new_core(1, **PLAIN)
    core.step(vote(2, 1, term=1))
    core.step(vote(3, 1, term=1))
    core.step(vote(2, 1, term=1))
    resps = of_type(take_msgs(core), MsgType.VOTE_RESP)
    assert [(m.to, m.reject) for m in resps] == [(2, False), (3, True), (2, False)]
    assert core.vote == 2 and core.term == 1


@pytest.mark.parametrize("mtype", [MsgType.APP, MsgType.HEARTBEAT])
def test_candidate_steps_down_on_append_of_equal_term(mtype: MsgType) -> None:
    """While waiting for votes, a candidate may receive an AppendEntries RPC from another server
    claiming to be leader. If the leader's term is at least as large as the candidate's current
    term, the candidate recognizes the leader as legitimate and returns to follower state.
    Reference: §5.2"""
    core = _candidate(1)
    term = core.term
    core.step(Message(mtype, to=1, frm=2, term=term, index=0, log_term=0))
    assert core.role == Role.FOLLOWER
    assert core.term == term
    assert core.leader == 2
    assert core.vote == 1  # its own vote in this term stays recorded


def test_candidate_rejects_append_of_lower_term() -> None:
    """If the term in the RPC is smaller than the candidate's current term, the candidate rejects
    the RPC and continues in candidate state.
    Reference: §5.2"""
    core = _candidate(1)
    core.step(app(2, 1, term=core.term - 1, index=0, log_term=0))
    assert core.role == Role.CANDIDATE
    resps = of_type(take_msgs(core), MsgType.APP_RESP)
    assert len(resps) == 1 and resps[0].term == core.term


def test_election_timeouts_are_randomized() -> None:
    """Raft uses randomized election timeouts, chosen from a fixed interval (here
    [election_tick, 2*election_tick)), so that split votes are rare.
    Reference: §5.2"""
    election_tick = 10
    observed = set()
    for seed in range(60):
        core = new_core(1, seed=seed, election_tick=election_tick, **PLAIN)
        ticks = 0
        while core.role == Role.FOLLOWER:
            core.tick()
            ticks += 1
            assert ticks <= 2 * election_tick
        observed.add(ticks)
    assert min(observed) >= election_tick
    assert max(observed) <= 2 * election_tick - 1
    assert len(observed) >= 5, f"timeouts not randomized: {sorted(observed)}"


def test_election_timeout_is_rerandomized_each_term() -> None:
    """Each candidate restarts its randomized election timeout at the start of an election, so a
    node does not keep the same timeout forever.
    Reference: §5.2"""
    core = new_core(1, seed=3, **PLAIN)
    gaps = []
    last = 0
    for tick in range(1, 400):
        before = core.term
        core.tick()
        if core.term != before:
            gaps.append(tick - last)
            last = tick
    assert len(gaps) >= 10
    assert all(10 <= g <= 19 for g in gaps)
    assert len(set(gaps)) > 1


def test_leader_elected_in_network_and_others_follow() -> None:
    """Once a candidate wins an election, it becomes leader and sends heartbeat messages to all
    of the other servers to establish its authority and prevent new elections.
    Reference: §5.2"""
    net = Network(**PLAIN)
    net.elect(1)
    for _ in range(50):
        net.tick()
    assert net.leaders() == [1]
    assert all(c.leader == 1 and c.term == 1 for c in net.nodes.values())


def test_split_vote_is_resolved_by_a_later_election() -> None:
    """When no candidate obtains a majority, each candidate times out and starts a new election
    by incrementing its term; randomized timeouts resolve the split.
    Reference: §5.2"""
    net = Network(voters=(1, 2, 3, 4), **PLAIN)
    # 1 and 2 campaign simultaneously; 3 votes for 1, 4 votes for 2: nobody has 3 of 4.
    net.cut_link(1, 4)
    net.cut_link(2, 3)
    net.nodes[1].campaign()
    net.nodes[2].campaign()
    net.deliver_all()
    assert net.leaders() == []
    net.heal()
    for _ in range(100):
        net.tick()
        if net.leaders():
            break
    assert len(net.leaders()) == 1
    leader = net.nodes[net.leaders()[0]]
    assert leader.term >= 2


def test_vote_granted_in_an_earlier_term_does_not_count() -> None:
    """Votes are per term: a grant cast in an earlier term is stale and must not help a
    candidate of a later term reach its majority.
    Reference: §5.2"""
    core = _candidate(1)
    for _ in range(2 * core.config.election_tick):
        core.tick()
    drain(core)
    assert core.role == Role.CANDIDATE and core.term == 2
    core.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=1))
    assert core.role == Role.CANDIDATE
    core.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=2))
    assert core.role == Role.LEADER
