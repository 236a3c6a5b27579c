"""Leadership transfer (dissertation §3.10)."""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import (
    Network,
    all_msgs,
    drain,
    new_core,
    of_type,
    take_msgs,
    vote,
)
from zraft.raft import ConfChange, ConfChangeKind, Message, MsgType, ProposalDropped, Role
from zraft.raft.types import CAMPAIGN_TRANSFER


def test_timeout_now_sent_when_target_is_caught_up() -> None:
    """To transfer leadership, the leader makes sure the target's log is up to date, then sends
    it a TimeoutNow request (an order to start an election at once).
    Reference: dissertation §3.10"""
    net = Network()
    leader = net.elect(1)
    net.propose(1, b"a")
    assert leader.progress[2].match == leader.log.last_index()
    leader.transfer_leader(2)
    rd = leader.ready()
    timeouts = of_type(all_msgs(rd), MsgType.TIMEOUT_NOW)
    assert [(m.to, m.term) for m in timeouts] == [(2, leader.term)]
    assert timeouts[0] in rd.messages  # carries only durable state: may leave before persisting
    leader.advance(rd)


def test_lagging_target_is_caught_up_before_timeout_now() -> None:
    """If the target's log is behind, the leader first replicates the missing entries to it and
    sends TimeoutNow only once the target holds the leader's whole log.
    Reference: dissertation §3.10"""
    net = Network()
    leader = net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"p%d" % k)
    net.heal()
    start = len(net.sent)
    leader.transfer_leader(3)
    net.process(1)
    assert not net.sent_of(MsgType.TIMEOUT_NOW)
    net.deliver_all()
    sent = net.sent[start:]
    first_timeout = next(i for i, m in enumerate(sent) if m.type == MsgType.TIMEOUT_NOW)
    apps_to_3 = [m for m in sent[:first_timeout] if m.type == MsgType.APP and m.to == 3 and m.entries]
    assert apps_to_3, "target got TimeoutNow before being caught up"
    assert len(net.sent_of(MsgType.TIMEOUT_NOW)) == 1
    assert net.leaders() == [3]
    assert net.applied_data(3)[:5] == [b"p0", b"p1", b"p2", b"p3", b"p4"]


def test_transfer_target_wins_election_despite_leader_lease() -> None:
    """On TimeoutNow the target starts an election immediately (skipping pre-vote) with a higher
    term; its vote requests are marked as a transfer so that voters in a leader lease still
    consider them, and it wins; the old leader becomes a follower.
    Reference: dissertation §3.10"""
    net = Network(pre_vote=True, check_quorum=True)
    old = net.elect(1)
    term = old.term
    old.transfer_leader(2)
    net.deliver_all()
    assert net.leaders() == [2]
    assert net.nodes[2].term == term + 1
    assert old.role == Role.FOLLOWER and old.leader == 2
    net.propose(2, b"after")
    assert all(net.applied_data(n) == [b"after"] for n in net.nodes)


def test_timeout_now_skips_prevote_and_marks_vote_requests() -> None:
    """A server receiving TimeoutNow behaves as if its election timer fired, but without a
    pre-vote round (the leader vouches for it): it becomes candidate for term + 1 at once.
    Reference: dissertation §3.10"""
    core = new_core(2, pre_vote=True, check_quorum=True)
    core.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
    drain(core)
    core.step(Message(MsgType.TIMEOUT_NOW, to=2, frm=1, term=1))
    assert core.role == Role.CANDIDATE and core.term == 2
    votes = of_type(take_msgs(core), MsgType.VOTE)
    assert sorted(m.to for m in votes) == [1, 3]
    assert all(m.context == CAMPAIGN_TRANSFER for m in votes)


def test_voter_in_lease_grants_transfer_vote() -> None:
    """A vote request marked as a leadership transfer is not a disruption: a voter grants it
    even though it heard from the (transferring) leader within the election timeout.
    Reference: dissertation §3.10"""
    core = new_core(3, pre_vote=True, check_quorum=True)
    core.step(Message(MsgType.HEARTBEAT, to=3, frm=1, term=1))
    drain(core)
    core.step(vote(2, 3, term=2, index=0, log_term=0, context=CAMPAIGN_TRANSFER))
    assert (core.term, core.vote) == (2, 2)
    resps = of_type(take_msgs(core), MsgType.VOTE_RESP)
    assert [(m.to, m.reject) for m in resps] == [(2, False)]


def test_proposals_are_dropped_during_transfer() -> None:
    """While a transfer is under way the leader stops accepting client requests, so that the
    target can catch up and the transfer can complete.
    Reference: dissertation §3.10"""
    net = Network(voters=(1, 2, 3, 4))
    leader = net.elect(1)
    net.isolate(2)
    leader.transfer_leader(2)
    with pytest.raises(ProposalDropped):
        leader.propose(b"x")
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 4))
    assert leader.role == Role.LEADER


def test_transfer_aborts_after_an_election_timeout() -> None:
    """If the transfer does not complete within an election timeout, the leader aborts it and
    resumes accepting client requests.
    Reference: dissertation §3.10"""
    net = Network()
    leader = net.elect(1)
    net.isolate(2)
    leader.transfer_leader(2)
    for _ in range(leader.config.election_tick - 1):
        net.tick([1, 3])
    with pytest.raises(ProposalDropped):
        leader.propose(b"early")
    net.tick([1, 3])
    assert leader.role == Role.LEADER
    leader.propose(b"late")
    net.deliver_all()
    assert net.applied_data(3) == [b"late"]
    # The target coming back after the abort no longer triggers a TimeoutNow.
    sent_before = len(net.sent_of(MsgType.TIMEOUT_NOW))
    net.heal()
    net.tick(times=3)
    assert len(net.sent_of(MsgType.TIMEOUT_NOW)) == sent_before
    assert net.leaders() == [1]
    assert net.applied_data(2) == [b"late"]


@pytest.mark.parametrize("target", [1, 4, 9])
def test_transfer_to_self_or_non_voter_is_ignored(target: int) -> None:
    """Only a voting member other than the leader can take over leadership; other targets are
    ignored and the leader keeps serving.
    Reference: dissertation §3.10"""
    net = Network(voters=(1, 2, 3), learners=(4,))
    leader = net.elect(1)
    leader.transfer_leader(target)
    leader.propose(b"x")
    net.deliver_all()
    assert net.leaders() == [1]
    assert not net.sent_of(MsgType.TIMEOUT_NOW)
