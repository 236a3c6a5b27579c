"""The Ready/advance contract between the core and its shell: what must be durable before which
message leaves (Figure 2's "persistent state ... updated on stable storage before responding to
RPCs", and the leader's parallel write of dissertation §10.2.1), plus batching."""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import (
    Network,
    all_msgs,
    app,
    app_resp,
    drain,
    make_leader,
    new_core,
    of_type,
    vote,
)
from zraft.raft import Entry, HardState, LogInvariantError, Message, MsgType, Role

PLAIN = dict(pre_vote=False, check_quorum=False)


def _stable_leader():
    core = new_core(1, **PLAIN)
    make_leader(core)
    for v in (2, 3):
        core.step(app_resp(v, 1, core.term, 1))
    drain(core)
    assert core.log.committed == 1
    return core


def test_leader_counts_its_own_entry_only_after_advance() -> None:
    """The leader may write its log in parallel with replicating it, but counts itself toward
    the majority for an entry only once that entry is durable on its own disk (after advance).
    Reference: dissertation §10.2.1"""
    core = _stable_leader()
    index = core.propose(b"x")
    rd = core.ready()
    assert [e.index for e in rd.entries] == [index]
    core.step(app_resp(2, 1, core.term, index))  # one follower has it: 2 of 3 only with the leader
    assert core.log.committed == index - 1
    core.advance(rd)
    assert core.log.committed == index
    rd = drain(core)
    assert [e.data for e in rd.committed_entries] == [b"x"]


def test_leader_appends_leave_before_persist_follower_answers_after() -> None:
    """A leader's AppendEntries may be sent before its own write completes (followers check the
    entries for themselves), whereas a follower may acknowledge entries only after they are
    durable: its AppendEntries responses go in messages_after_persist.
    Reference: dissertation §10.2.1"""
    leader = _stable_leader()
    leader.propose(b"x")
    rd = leader.ready()
    apps = of_type(rd.messages, MsgType.APP)
    assert sorted(m.to for m in apps) == [2, 3]
    assert not of_type(rd.messages_after_persist, MsgType.APP)
    leader.advance(rd)
    follower = new_core(2, **PLAIN)
    follower.step(app(1, 2, term=1, index=0, log_term=0, entries=leader.log.entries[:2]))
    rd = follower.ready()
    assert rd.messages == ()
    assert [m.type for m in rd.messages_after_persist] == [MsgType.APP_RESP]
    assert rd.entries


@pytest.mark.parametrize("granted", [True, False])
def test_vote_responses_leave_only_after_persist(granted: bool) -> None:
    """currentTerm and votedFor must be on stable storage before the server responds to a
    RequestVote: every vote response, granted or not, is in messages_after_persist.
    Reference: §5.2"""
    core = new_core(1, hard_state=HardState(term=1, vote=3 if not granted else 0), **PLAIN)
    drain(core)
    core.step(vote(2, 1, term=1))
    rd = core.ready()
    resps = of_type(all_msgs(rd), MsgType.VOTE_RESP)
    assert len(resps) == 1 and resps[0].reject is not granted
    assert rd.messages == ()
    assert resps[0] in rd.messages_after_persist
    core.advance(rd)


def test_term_or_vote_change_holds_back_every_message() -> None:
    """When the term or vote changed in a cycle, nothing may leave before that change is
    durable: even a leader's AppendEntries go to messages_after_persist.
    Reference: dissertation §10.2.1"""
    core = new_core(1, **PLAIN)
    core.campaign()
    core.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=1))
    assert core.role == Role.LEADER
    rd = core.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert rd.messages == ()
    assert sorted(m.to for m in of_type(rd.messages_after_persist, MsgType.APP)) == [2, 3]
    core.advance(rd)
    # Once the term is durable, the same kind of message may leave early again.
    core.step(app_resp(2, 1, 1, 1))
    core.propose(b"y")
    rd = core.ready()
    assert of_type(rd.messages, MsgType.APP)


def test_must_sync_only_when_entries_or_term_or_vote_change() -> None:
    """The shell must fsync when the Ready carries entries, a snapshot, or a new term or vote;
    a change of commit index alone (which can be recomputed) does not require it.
    Reference: dissertation §10.2.1"""
    core = new_core(2, **PLAIN)
    core.step(vote(1, 2, term=1))
    rd = drain(core)
    assert rd.must_sync and rd.entries == () and rd.hard_state == HardState(1, 1, 0)
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=[Entry(1, 1)]))
    rd = drain(core)
    assert rd.must_sync and rd.entries
    core.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1, commit=1))
    rd = drain(core)
    assert rd.hard_state == HardState(1, 1, 1)
    assert not rd.must_sync


def test_hard_state_reports_term_vote_and_commit_changes_only() -> None:
    """Ready.hard_state carries the (term, vote, commit) to persist whenever one of them
    changed since the last Ready, and is None otherwise.
    Reference: §5.2"""
    core = new_core(2, **PLAIN)
    assert not core.has_ready()
    core.step(vote(3, 2, term=2))
    assert drain(core).hard_state == HardState(term=2, vote=3, commit=0)
    core.step(Message(MsgType.HEARTBEAT, to=2, frm=3, term=2))
    rd = drain(core)
    assert rd.hard_state is None
    core.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=4))
    assert drain(core).hard_state == HardState(term=4, vote=0, commit=0)


def test_several_proposals_are_batched_into_one_ready() -> None:
    """Proposals made before one Ready are written together and sent together: one Ready holds
    all the new entries, and each follower gets one AppendEntries carrying all of them.
    Reference: dissertation §10.2.2"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    for k in range(3):
        leader.propose(b"b%d" % k)
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"b0", b"b1", b"b2"]
    apps = of_type(all_msgs(rd), MsgType.APP)
    assert sorted(m.to for m in apps) == [2, 3], f"{len(apps)} AppendEntries for 2 followers"
    assert all([e.data for e in m.entries] == [b"b0", b"b1", b"b2"] for m in apps)
    leader.advance(rd)


def test_ready_must_be_advanced_before_the_next() -> None:
    """Each Ready must be fully handled and acknowledged with advance() before the next one is
    taken; until then has_ready() is False and ready() refuses.
    Reference: dissertation §10.2.1"""
    core = new_core(1, **PLAIN)
    core.campaign()
    rd = core.ready()
    core.tick()
    assert not core.has_ready()
    with pytest.raises(LogInvariantError):
        core.ready()
    core.advance(rd)
    core.ready()  # accepted again once the previous Ready was advanced


def test_follower_applies_entries_only_once_durable() -> None:
    """Only durable, committed entries reach the state machine: a follower that learns in one
    step that new entries are committed applies them in the Ready after the one that persists
    them.
    Reference: §5.3"""
    core = new_core(2, **PLAIN)
    entries = [Entry(1, i, data=b"d%d" % i) for i in (1, 2)]
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=entries, commit=2))
    rd = drain(core)
    assert [e.index for e in rd.entries] == [1, 2]
    assert rd.committed_entries == ()
    rd = drain(core)
    assert [e.index for e in rd.committed_entries] == [1, 2]
    assert not core.has_ready()


def test_messages_are_handed_out_once() -> None:
    """Each message appears in exactly one Ready; an idle core has nothing ready.
    Reference: dissertation §10.2.1"""
    core = _stable_leader()
    assert not core.has_ready()
    core.tick()
    first = all_msgs(drain(core))
    assert of_type(first, MsgType.HEARTBEAT)
    assert all_msgs(drain(core)) == []
    assert not core.has_ready()
