"""Impossible peer input is refused without raising (zraft.raft.validate; issue 10).

Before, one AppendEntries whose entries did not follow its index raised LogInvariantError and
ended the raft process, again at every restart. Now such a message is dropped and counted.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.raft.harness import app, app_resp, drain, ents, log_entries, make_leader, new_core
from zraft.raft import ConfState, Entry, EntryKind, HardState, Message, MsgType, Role, SnapshotMeta
from zraft.raft.validate import MAX_VALUE, problem

PLAIN = dict(pre_vote=False, check_quorum=False)


def follower():
    core = new_core(2, entries=ents(1, 1, 2), hard_state=HardState(term=2, commit=2), **PLAIN)
    drain(core)
    return core


IMPOSSIBLE = [
    ("entries that do not follow the index", app(1, 2, 2, 3, 2, entries=ents(2, start=5))),
    ("entries with a gap", app(1, 2, 2, 3, 2, entries=(Entry(2, 4), Entry(2, 6)))),
    ("entries out of term order", app(1, 2, 3, 3, 2, entries=(Entry(3, 4), Entry(2, 5)))),
    ("an entry above the leader's term", app(1, 2, 2, 3, 2, entries=ents(5, start=4))),
    ("an entry below the previous term", app(1, 2, 3, 3, 2, entries=ents(1, start=4))),
    ("a previous term above the leader's", app(1, 2, 2, 3, 4)),
    ("a configuration entry that does not decode", app(1, 2, 2, 3, 2, entries=(Entry(2, 4, EntryKind.CONF, b"\xff"),))),
    ("a configuration without voters", app(1, 2, 2, 3, 2, entries=(Entry(2, 4, EntryKind.CONF, b"v=;l=4"),))),
    ("a configuration with node 0", app(1, 2, 2, 3, 2, entries=(Entry(2, 4, EntryKind.CONF, b"v=0,1;l="),))),
    ("a term beyond range", Message(MsgType.HEARTBEAT, to=2, frm=1, term=MAX_VALUE + 1)),
    ("a negative commit", Message(MsgType.HEARTBEAT, to=2, frm=1, term=2, commit=-1)),
    ("a message from itself", Message(MsgType.HEARTBEAT, to=2, frm=2, term=2)),
    ("a message from node 0", Message(MsgType.HEARTBEAT, to=2, frm=0, term=2)),
    ("a message for another node", Message(MsgType.HEARTBEAT, to=3, frm=1, term=2)),
    ("entries on a heartbeat", Message(MsgType.HEARTBEAT, to=2, frm=1, term=2, entries=ents(2, start=4))),
    ("a snapshot on an append", replace(app(1, 2, 2, 3, 2), snapshot=SnapshotMeta(9, 2, ConfState((1, 2, 3))))),
    ("a SNAP without a snapshot", Message(MsgType.SNAP, to=2, frm=1, term=2)),
    ("a snapshot of a later term", Message(MsgType.SNAP, to=2, frm=1, term=2, snapshot=SnapshotMeta(9, 3, ConfState((1, 2))))),
    ("a snapshot without voters", Message(MsgType.SNAP, to=2, frm=1, term=2, snapshot=SnapshotMeta(9, 2, ConfState()))),
    ("a snapshot at index 9 of term 0", Message(MsgType.SNAP, to=2, frm=1, term=2, snapshot=SnapshotMeta(9, 0, ConfState((1,))))),
]


@pytest.mark.parametrize("what, msg", IMPOSSIBLE, ids=[w for w, _ in IMPOSSIBLE])
def test_an_impossible_message_is_refused_and_changes_nothing(what: str, msg: Message) -> None:
    core = follower()
    before = (core.term, core.vote, core.leader, core.log.committed, log_entries(core))
    core.step(msg)
    assert problem(msg, 2) is not None
    assert core.refused == 1 and core.last_refusal
    assert (core.term, core.vote, core.leader, core.log.committed, log_entries(core)) == before
    assert not core.has_ready()


def test_a_legitimate_append_is_accepted() -> None:
    core = follower()
    core.step(app(1, 2, 3, 3, 2, entries=(Entry(2, 4), Entry(3, 5, EntryKind.CONF, b"v=1,2,3;l=4")), commit=4))
    assert core.refused == 0 and log_entries(core)[-2:] == [(4, 2), (5, 3)] and core.log.committed == 4


def test_a_leader_refuses_an_acknowledgement_beyond_its_log() -> None:
    leader = new_core(1, **PLAIN)
    make_leader(leader)
    last = leader.log.last_index()
    leader.step(app_resp(2, 1, leader.term, last + 100))
    assert leader.refused == 1 and leader.progress[2].match < last + 100
    assert leader.log.committed <= last


def test_a_read_index_answer_counts_only_from_the_leader() -> None:
    core = follower()
    core.step(app(1, 2, 2, 3, 2))  # node 1 leads term 2
    core.step(Message(MsgType.READ_INDEX_RESP, to=2, frm=3, term=2, index=99, context=7))
    assert core.refused == 1 and not core.ready().read_states


messages = st.builds(
    Message,
    type=st.sampled_from(list(MsgType)),
    to=st.sampled_from([1, 2, 3, 9]),
    frm=st.sampled_from([0, 1, 2, 3, 4, 9]),
    term=st.integers(0, 6) | st.just(MAX_VALUE) | st.just(MAX_VALUE + 1),
    log_term=st.integers(0, 6),
    index=st.integers(0, 12) | st.just(MAX_VALUE),
    entries=st.lists(st.builds(Entry, term=st.integers(0, 6), index=st.integers(0, 14),
                               kind=st.sampled_from(list(EntryKind)),
                               data=st.sampled_from([b"", b"x", b"v=1,2,3;l=", b"v=;l=", b"\xff"])),
                     max_size=4).map(tuple),
    commit=st.integers(0, 14) | st.just(MAX_VALUE),
    reject=st.booleans(),
    reject_hint=st.integers(0, 14),
    context=st.integers(0, 3),
    snapshot=st.none() | st.builds(SnapshotMeta, index=st.integers(0, 14), term=st.integers(0, 6),
                                   conf=st.sampled_from([ConfState(), ConfState((1, 2, 3)), ConfState((2,), (4,))])),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["follower", "leader", "candidate"]), st.lists(messages, max_size=12))
def test_no_message_sequence_makes_the_core_raise(role: str, msgs: list[Message]) -> None:
    """Adversarial sequences against a follower, a leader and a candidate: the core answers,
    ignores or refuses; it never raises, and what it commits stays a prefix of its log."""
    node = 1 if role == "leader" else 2
    core = new_core(node, entries=ents(1, 1, 2), hard_state=HardState(term=2, commit=2), **PLAIN)
    drain(core)
    if role == "leader":
        make_leader(core)
    elif role == "candidate":
        core.campaign()
        drain(core)
    for msg in msgs:
        core.step(replace(msg, to=core.id) if msg.to != 9 else msg)
        while core.has_ready():
            drain(core)
        assert core.log.committed <= core.log.last_index()
        assert core.role in (Role.FOLLOWER, Role.CANDIDATE, Role.PRE_CANDIDATE, Role.LEADER)
