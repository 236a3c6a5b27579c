"""The vote floor: a node whose log was cut short after damage to synced data (the raft
process salvages the readable prefix) keeps voting as if it still had the entries it lost.

Rules (see zraft/raft/DESIGN.md, "A log cut short by damage"):
(a) a vote or pre-vote goes only to a candidate at least as up-to-date as max(own log, floor);
(b) below its floor, a node does not campaign: no election timeout, no campaign(), no TimeoutNow;
(c) once its own last log id reaches the floor, the floor is cleared, and persisted;
plus the leader side: a follower below its floor tells the leader where its log really ends,
and the leader forgets the `match` it can no longer trust.
"""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import (
    Network,
    app,
    drain,
    ents,
    make_leader,
    new_core,
    of_type,
    take_msgs,
    vote,
)
from zraft.raft import HardState, Message, MsgType, Role
from zraft.raft.types import ProgressState

PLAIN = dict(pre_vote=False, check_quorum=False)


def damaged(node: int = 1, log: tuple[int, ...] = (1, 1, 2), floor: tuple[int, int] = (2, 5),
            term: int = 2, **cfg: object):
    """A follower restarted from a salvaged log `log` with the given vote floor."""
    hs = HardState(term=term, vote=0, commit=0, floor_term=floor[0], floor_index=floor[1])
    core = new_core(node, entries=ents(*log), hard_state=hs, **cfg)
    drain(core)
    return core


# == rule (a) ==================================================================================
@pytest.mark.parametrize(("cand_term", "cand_index", "granted"), [
    (2, 3, False),  # as up-to-date as the salvaged log, but below the floor
    (2, 4, False),  # still below the floor
    (2, 5, True),   # exactly the floor
    (2, 9, True),
    (3, 1, True),   # a later last term beats the floor's index
    (1, 50, False),  # an earlier last term never does
])
@pytest.mark.parametrize("pre", [False, True])
def test_rule_a_votes_only_for_candidates_reaching_the_floor(cand_term: int, cand_index: int, granted: bool,
                                                             pre: bool) -> None:
    core = damaged(**PLAIN)
    core.step(vote(2, 1, term=3, index=cand_index, log_term=cand_term, pre=pre))
    resp_type = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
    resps = of_type(take_msgs(core), resp_type)
    assert len(resps) == 1 and resps[0].reject is not granted
    if not pre:
        assert core.vote == (2 if granted else 0)


def test_rule_a_without_a_floor_the_salvaged_log_alone_would_grant() -> None:
    """The control: the same salvaged log with no floor votes for a candidate that may lack
    entries this node acknowledged before the damage."""
    core = damaged(floor=(0, 0), **PLAIN)
    core.step(vote(2, 1, term=3, index=3, log_term=2))
    resps = of_type(take_msgs(core), MsgType.VOTE_RESP)
    assert resps and not resps[0].reject


# == rule (b) ==================================================================================
def test_rule_b_no_campaign_on_timeout_while_below_the_floor() -> None:
    core = damaged()
    for _ in range(10 * 10):
        core.tick()
    assert core.role == Role.FOLLOWER
    assert not of_type(take_msgs(core), MsgType.PRE_VOTE, MsgType.VOTE)


def test_rule_b_campaign_and_timeout_now_are_ignored_while_below_the_floor() -> None:
    core = damaged(**PLAIN)
    core.campaign()
    core.step(Message(MsgType.TIMEOUT_NOW, to=1, frm=2, term=2))
    assert core.role == Role.FOLLOWER and core.term == 2
    assert not of_type(take_msgs(core), MsgType.VOTE)


# == rule (c) ==================================================================================
def test_rule_c_floor_cleared_and_persisted_once_the_log_reaches_it() -> None:
    core = damaged(**PLAIN)
    core.step(app(2, 1, term=2, index=3, log_term=2, entries=ents(2, start=4)))
    rd = drain(core)
    assert core.vote_floor == (2, 5) and (rd.hard_state is None or rd.hard_state.vote_floor() == (2, 5))
    core.step(app(2, 1, term=2, index=4, log_term=2, entries=ents(2, start=5)))
    rd = drain(core)
    assert core.vote_floor == (0, 0) and not core.below_vote_floor()
    assert rd.hard_state is not None and rd.hard_state.vote_floor() == (0, 0)
    assert rd.entries and rd.entries[-1].index == 5  # persisted with the entries that justify it
    core.campaign()
    assert core.role == Role.CANDIDATE


def test_rule_c_a_later_term_clears_the_floor_even_when_shorter() -> None:
    core = damaged(**PLAIN)
    core.step(app(2, 1, term=3, index=3, log_term=2, entries=ents(3, start=4)))
    rd = drain(core)
    assert core.vote_floor == (0, 0) and rd.hard_state is not None and rd.hard_state.vote_floor() == (0, 0)


def test_rule_c_a_floor_already_reached_at_start_is_cleared_at_once() -> None:
    hs = HardState(term=2, floor_term=2, floor_index=3)
    core = new_core(1, entries=ents(1, 1, 2), hard_state=hs, **PLAIN)
    assert core.vote_floor == (0, 0) and core.has_ready()
    rd = drain(core)
    assert rd.hard_state is not None and rd.hard_state.vote_floor() == (0, 0)


def test_floor_survives_a_restart_through_the_hard_state() -> None:
    core = damaged(**PLAIN)
    assert core.hard_state().vote_floor() == (2, 5)


# == the leader's stale match ===================================================================
def test_follower_below_its_floor_reports_where_its_log_ends() -> None:
    core = damaged(**PLAIN)
    core.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=2, commit=2))
    resp = of_type(take_msgs(core), MsgType.HEARTBEAT_RESP)
    assert resp and resp[0].reject and resp[0].reject_hint == 3
    healthy = damaged(floor=(0, 0), **PLAIN)
    healthy.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=2, commit=2))
    resp = of_type(take_msgs(healthy), MsgType.HEARTBEAT_RESP)
    assert resp and not resp[0].reject


def test_a_follower_whose_log_ends_below_the_commit_it_is_sent_reports_it_too() -> None:
    """A wiped data folder: no floor (nothing says the node lost anything), an empty log, and
    a leader that still believes its old `match`. The heartbeat's commit is at most what the
    follower acknowledged to this leader, so a commit beyond its log proves the loss."""
    wiped = new_core(1, hard_state=HardState(term=2), **PLAIN)
    drain(wiped)
    wiped.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=2, commit=5))
    resp = of_type(take_msgs(wiped), MsgType.HEARTBEAT_RESP)
    assert resp and resp[0].reject and resp[0].reject_hint == 0
    caught_up = damaged(floor=(0, 0), **PLAIN)  # its log ends at 3: a commit of 3 is no news
    caught_up.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=2, commit=3))
    resp = of_type(take_msgs(caught_up), MsgType.HEARTBEAT_RESP)
    assert resp and not resp[0].reject


def test_leader_forgets_a_match_the_follower_no_longer_holds() -> None:
    """Without this, the leader would ignore the follower's rejections as stale (they are at
    or below `match`) and never send it the entries it lost."""
    leader = new_core(1, entries=ents(1, 1, 1, 1, 1, 1), hard_state=HardState(term=1), **PLAIN)
    make_leader(leader)
    progress = leader.progress[2]
    progress.maybe_update(7)
    progress.become_replicate()
    leader.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=leader.term, reject=True, reject_hint=3))
    assert progress.match == 0 and progress.state == ProgressState.PROBE
    apps = of_type(take_msgs(leader), MsgType.APP)
    assert apps and apps[0].to == 2 and apps[0].index == 3


def test_leader_ignores_a_report_that_is_not_behind_its_match() -> None:
    leader = new_core(1, entries=ents(1, 1, 1), hard_state=HardState(term=1), **PLAIN)
    make_leader(leader)
    leader.progress[2].maybe_update(2)
    leader.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=leader.term, reject=True, reject_hint=3))
    assert leader.progress[2].match == 2


# == the whole story on a network ===============================================================
def _lose_committed_entry(floor: bool) -> Network:
    """Node 1 leads and commits an entry with node 2's acknowledgement while node 3 is cut off;
    node 2's log then loses that entry (salvaged prefix), with or without its floor; node 1
    goes away and node 3 campaigns."""
    net = Network(**PLAIN)
    net.elect(1)
    net.isolate(3)
    index = net.propose(1, b"acknowledged by 2")
    assert net.nodes[1].log.committed == index
    storage = net.storage[2]
    last = storage.entries[-1]
    storage.entries = [e for e in storage.entries if e.index < index]
    hs = storage.hard_state
    storage.hard_state = HardState(hs.term, hs.vote, min(hs.commit, index - 1),
                                   *((last.term, last.index) if floor else (0, 0)))
    net.restart(2)
    net.isolate(1)
    net.isolated.discard(3)
    net.nodes[3].campaign()
    net.deliver_all()
    return net


def test_floor_keeps_a_committed_entry_from_being_lost() -> None:
    net = _lose_committed_entry(floor=True)
    # Node 3 lacks the committed entry: node 2 refuses it (node 1, cut off, still thinks it leads).
    assert net.nodes[3].role != Role.LEADER and net.nodes[2].vote == 0
    net.nodes[2].campaign()  # and node 2 itself may not stand (rule b)
    net.deliver_all()
    assert net.leaders() == [1]
    net.heal()
    net.elect(1)
    net.propose(1, b"after")
    assert net.nodes[2].vote_floor == (0, 0)  # caught up from the leader: floor cleared
    assert net.storage[2].hard_state.vote_floor() == (0, 0)
    assert [e.data for e in net.storage[2].entries] == [e.data for e in net.storage[1].entries]


def test_without_the_floor_the_committed_entry_is_lost() -> None:
    """The hole the floor closes, shown on the same schedule."""
    net = _lose_committed_entry(floor=False)
    assert net.nodes[3].role == Role.LEADER
    assert b"acknowledged by 2" not in [e.data for e in net.nodes[3].log.entries]
