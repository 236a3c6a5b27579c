"""Cluster membership changes, one server at a time (dissertation §4.1-§4.2)."""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import (
    Network,
    app,
    app_resp,
    drain,
    make_leader,
    new_core,
)
from zraft.raft import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    ProposalDropped,
    Role,
)

PLAIN = dict(pre_vote=False, check_quorum=False)
ADD_LEARNER = ConfChangeKind.ADD_LEARNER
ADD_VOTER = ConfChangeKind.ADD_VOTER
REMOVE = ConfChangeKind.REMOVE


def _cluster_with_learner(*learners: int) -> Network:
    net = Network(**PLAIN)
    net.elect(1)
    for node in learners or (4,):
        net.add_node(node)
        net.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, node))
        net.deliver_all()
    return net


def test_learner_receives_entries_but_does_not_count_toward_commit() -> None:
    """A new server joins as a non-voting member: the leader replicates entries to it, but it is
    not considered for majorities, so it cannot make the cluster commit anything.
    Reference: dissertation §4.2.1"""
    net = _cluster_with_learner(4, 5)
    leader = net.nodes[1]
    assert leader.conf == ConfState(voters=(1, 2, 3), learners=(4, 5))
    net.propose(1, b"a")
    assert net.applied_data(4) == net.applied_data(5) == [b"a"]
    assert net.nodes[4].conf == leader.conf
    committed = leader.log.committed
    net.isolate(2)
    net.isolate(3)
    index = net.propose(1, b"b")  # leader + 2 learners: 3 of 5 members, but 1 of 3 voters
    assert net.nodes[4].log.last_index() == net.nodes[5].log.last_index() == index
    assert leader.progress[4].match == leader.progress[5].match == index
    assert leader.log.committed == committed
    assert net.applied_data(1) == [b"a"]


def test_learner_never_campaigns() -> None:
    """A non-voting member never starts an election: its timer firing, campaign() or TimeoutNow
    leave it a follower in the same term.
    Reference: dissertation §4.2.1"""
    net = _cluster_with_learner()
    learner = net.nodes[4]
    term = learner.term
    net.isolate(4)
    start = len(net.sent)
    for _ in range(10 * learner.config.election_tick):
        learner.tick()
        net.process(4)
    learner.campaign()
    learner.step(Message(MsgType.TIMEOUT_NOW, to=4, frm=1, term=term))
    net.process(4)
    assert learner.role == Role.FOLLOWER and learner.term == term
    assert not [m for m in net.sent[start:] if m.type in (MsgType.VOTE, MsgType.PRE_VOTE)]


def test_learner_promoted_to_voter_counts_toward_commit() -> None:
    """Once the learner has caught up, it is promoted to a voting member; from then on it is
    part of the majority (3 of 4 here) and may campaign.
    Reference: dissertation §4.2.1"""
    net = _cluster_with_learner()
    leader = net.nodes[1]
    leader.propose_conf_change(ConfChange(ADD_VOTER, 4))
    net.deliver_all()
    assert leader.conf == ConfState(voters=(1, 2, 3, 4))
    assert net.nodes[4].conf == leader.conf
    committed = leader.log.committed
    net.isolate(2)
    net.isolate(3)
    net.propose(1, b"needs-3-of-4")
    assert leader.log.committed == committed  # 1 and 4 are only 2 of 4
    net.heal()
    net.isolate(3)
    net.propose(1, b"now")
    assert net.applied_data(4) == [b"needs-3-of-4", b"now"]
    leader.transfer_leader(4)
    net.deliver_all()
    assert net.leaders() == [4]


def test_removed_voter_no_longer_counts_toward_commit() -> None:
    """Removing a server shrinks the majority: in the new configuration of two voters both must
    acknowledge, and the removed server no longer receives entries.
    Reference: dissertation §4.1"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    leader.propose_conf_change(ConfChange(REMOVE, 3))
    net.deliver_all()
    assert leader.conf == ConfState(voters=(1, 2))
    assert 3 not in leader.progress
    last_on_3 = net.nodes[3].log.last_index()
    net.propose(1, b"two-of-two")
    assert net.applied_data(2) == [b"two-of-two"]
    assert net.nodes[3].log.last_index() == last_on_3
    committed = leader.log.committed
    net.isolate(2)
    net.propose(1, b"alone")
    assert leader.log.committed == committed


def test_only_one_uncommitted_membership_change_at_a_time() -> None:
    """A leader does not begin a new configuration change while a previous one is not yet
    committed: the second proposal is refused, and accepted once the first has committed.
    Reference: dissertation §4.1"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    net.isolate(2)
    net.isolate(3)
    leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    net.deliver_all()
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change(ConfChange(REMOVE, 3))
    net.heal()
    net.tick()
    net.deliver_all()
    assert leader.log.committed == leader.log.last_index()
    leader.propose_conf_change(ConfChange(REMOVE, 3))
    assert leader.conf == ConfState(voters=(1, 2), learners=(4,))


def test_new_leader_changes_membership_only_after_committing_in_its_term() -> None:
    """A leader may not append a new configuration entry until it has committed an entry of its
    own term (otherwise an uncommitted change of an earlier leader could be lost unsafely).
    Reference: dissertation §4.1"""
    core = new_core(1, **PLAIN)
    make_leader(core)
    with pytest.raises(ProposalDropped):
        core.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    core.step(app_resp(2, 1, core.term, 1))
    drain(core)
    core.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    assert 4 in core.conf.learners


@pytest.mark.parametrize(
    "change",
    [ConfChange(ADD_LEARNER, 2), ConfChange(ADD_VOTER, 3), ConfChange(REMOVE, 9)],
)
def test_meaningless_membership_change_is_refused(change: ConfChange) -> None:
    """A change adds or removes exactly one server: adding an existing member or removing a
    stranger is refused rather than appended.
    Reference: dissertation §4.1"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    last = leader.log.last_index()
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change(change)
    assert leader.log.last_index() == last


def test_configuration_takes_effect_when_appended() -> None:
    """A server always uses the latest configuration in its log, regardless of whether the entry
    is committed: the leader as soon as it appends the change, a follower as soon as it receives
    it.
    Reference: dissertation §4.1"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    net.isolate(3)
    net.drop = lambda m: m.type == MsgType.APP_RESP  # keep the entry uncommitted
    index = leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    assert leader.conf == ConfState(voters=(1, 2, 3), learners=(4,))
    assert 4 in leader.progress
    net.deliver_all()
    follower = net.nodes[2]
    assert follower.log.last_index() == index
    assert follower.log.committed < index and leader.log.committed < index
    assert follower.conf == ConfState(voters=(1, 2, 3), learners=(4,))


def test_configuration_reverts_when_its_entry_is_truncated() -> None:
    """If the latest configuration entry is removed from the log because of a change in
    leadership, the server falls back to the previous configuration in its log.
    Reference: dissertation §4.1"""
    net = Network(voters=(1, 2, 3, 4, 5), **PLAIN)
    leader = net.elect(1)
    for node in (3, 4, 5):
        net.isolate(node)
    index = leader.propose_conf_change(ConfChange(ADD_LEARNER, 6))
    net.deliver_all()
    follower = net.nodes[2]
    assert follower.log.last_index() == index
    assert follower.conf.learners == (6,)
    net.heal()
    net.isolate(1)
    net.elect(3)
    assert follower.leader == 3
    assert follower.log.entry(index).kind == EntryKind.NORMAL
    assert follower.conf == ConfState(voters=(1, 2, 3, 4, 5))


def test_follower_conf_reverts_on_truncation_single_core() -> None:
    """The same rule seen on one follower: a conflicting AppendEntries that cuts the uncommitted
    configuration entry restores the configuration of the remaining log.
    Reference: dissertation §4.1"""
    core = new_core(2, **PLAIN)
    base = ConfState(voters=(1, 2, 3))
    changed = ConfState(voters=(1, 2, 3), learners=(4,))
    core.step(app(1, 2, term=1, index=0, log_term=0,
                  entries=[Entry(1, 1), Entry(1, 2, EntryKind.CONF, changed.encode())], commit=1))
    assert core.conf == changed
    core.step(app(3, 2, term=2, index=1, log_term=1, entries=[Entry(2, 2)], commit=1))
    assert core.conf == base


def test_removed_leader_steps_down_after_the_change_commits() -> None:
    """A leader removed from the configuration keeps managing the cluster, without counting
    itself in majorities, until the change is committed; then it steps down.
    Reference: dissertation §4.2.2"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    net.isolate(2)
    index = leader.propose_conf_change(ConfChange(REMOVE, 1))
    net.deliver_all()
    assert leader.conf == ConfState(voters=(2, 3))
    assert leader.role == Role.LEADER
    assert leader.log.committed < index  # only 3 acknowledged: 1 of the 2 voters
    net.heal()
    net.tick()
    net.deliver_all()
    assert leader.log.committed >= index
    assert leader.role == Role.FOLLOWER
    for _ in range(40):
        net.tick()
        if net.leaders():
            break
    assert len(net.leaders()) == 1 and net.leaders()[0] in (2, 3)


# == a voter taken out by an uncommitted change may still stand (issue 10) ====================
def _removed_leader_with_the_only_copy() -> Network:
    """Leader 1 of (1, 2, 3, 4) appends its own removal and a write; only node 3 receives them;
    then node 1 loses leadership before anything commits, and node 3 goes down."""
    net = Network(voters=(1, 2, 3, 4), **PLAIN)
    net.elect(1)
    net.propose(1, b"committed")
    net.cut_link(1, 2)
    net.cut_link(1, 4)
    net.nodes[1].propose_conf_change(ConfChange(REMOVE, 1))
    net.deliver_all()
    assert net.nodes[3].conf == ConfState(voters=(2, 3, 4))
    assert net.nodes[1].log.committed < net.nodes[1].log.last_index()
    net.isolate(3)
    net.heal()
    net.isolate(3)
    return net


def test_a_voter_removed_by_an_uncommitted_change_may_still_stand_and_win() -> None:
    """Node 1's log is the most up-to-date of 1, 2 and 4, so it refuses their candidacies as
    less up-to-date (§5.4.1); the removal is not committed, so it may stand, counting only the
    votes of its latest configuration (2, 3, 4), wins with 2 and 4, commits its removal with
    their majority and steps down (D§4.2.2). Before this rule the cluster wedged here."""
    net = _removed_leader_with_the_only_copy()
    node1 = net.nodes[1]
    assert node1.id not in node1.conf.voters and node1._promotable()
    term = node1.term
    node1.campaign()
    net.deliver_all()
    assert node1.term == term + 1 and node1.role == Role.FOLLOWER  # it led, committed, stepped down
    assert node1.log.committed == node1.log.last_index()
    assert net.nodes[2].log.last_index() == net.nodes[4].log.last_index() == node1.log.last_index()
    assert net.nodes[2].conf == net.nodes[4].conf == ConfState(voters=(2, 3, 4))
    assert not node1._promotable()  # its removal is committed now: it stays out
    net.tick(nodes=[2, 4], times=40)
    assert net.leaders() and net.leaders()[0] in (2, 4)
    assert net.nodes[2].log.committed > node1.log.last_index()


def test_its_own_vote_does_not_count() -> None:
    """Standing for a configuration it is not in, the node needs a majority of that
    configuration's voters without itself: 1 of (2, 3, 4) is not enough."""
    net = _removed_leader_with_the_only_copy()
    net.isolate(4)
    node1 = net.nodes[1]
    node1.campaign()
    net.deliver_all()
    assert node1.role != Role.LEADER


def test_a_node_whose_removal_committed_does_not_stand() -> None:
    """A leader that removes itself steps down once the change commits; from then on it may
    not stand: the others hold the change and elect among themselves."""
    net = Network(**PLAIN)
    net.elect(1)
    net.propose(1, b"before")
    net.nodes[1].propose_conf_change(ConfChange(REMOVE, 1))
    net.deliver_all()
    node1 = net.nodes[1]
    assert node1.role == Role.FOLLOWER and node1.id not in node1.conf.voters
    assert node1.log.committed >= node1.log.conf_indexes[-1]
    assert not node1._promotable()
    node1.campaign()
    assert node1.role == Role.FOLLOWER
