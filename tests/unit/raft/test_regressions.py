"""Bugs the simulator found, each pinned by a minimal scenario."""

from __future__ import annotations

import random

from zraft.raft import (ConfState, Entry, HardState, InitialState, Message, MsgType, RaftConfig,
                        RaftCore, SnapshotMeta)


def follower(node_id: int = 3) -> RaftCore:
    initial = InitialState(hard_state=HardState(term=1), snapshot=SnapshotMeta(conf=ConfState((1, 2, 3))),
                           entries=(Entry(1, 1),))
    return RaftCore(RaftConfig(node_id=node_id), random.Random(1), initial)


def test_no_ack_for_entries_truncated_before_the_ack_left() -> None:
    """Found by `zraft sim --seed 1988 --steps 20000 --nodes 5`: a follower queued an ack for
    entries of term 1, then a term-2 leader replaced them before the ack was sent. Sent after
    persisting the new log, that ack told the stale leader about entries the follower no
    longer had, which it could count toward a commit."""
    core = follower()
    core.step(Message(MsgType.APP, to=3, frm=2, term=1, index=1, log_term=1,
                      entries=(Entry(1, 2, data=b"a"), Entry(1, 3, data=b"b")), commit=1))
    core.step(Message(MsgType.APP, to=3, frm=1, term=2, index=1, log_term=1,
                      entries=(Entry(2, 2, data=b"c"),), commit=1))
    rd = core.ready()
    acks = [(m.to, m.index) for m in rd.messages + rd.messages_after_persist
            if m.type == MsgType.APP_RESP and not m.reject]
    assert acks == [(1, 2)]
    assert [(e.index, e.term) for e in rd.entries] == [(2, 2)]


def test_no_ack_beyond_a_snapshot_that_replaced_the_log() -> None:
    core = follower()
    core.step(Message(MsgType.APP, to=3, frm=2, term=1, index=1, log_term=1,
                      entries=(Entry(1, 2), Entry(1, 3), Entry(1, 4)), commit=1))
    snapshot = SnapshotMeta(index=3, term=2, conf=ConfState((1, 2, 3)))
    core.step(Message(MsgType.SNAP, to=3, frm=1, term=2, snapshot=snapshot))
    rd = core.ready()
    acks = [(m.to, m.index) for m in rd.messages + rd.messages_after_persist
            if m.type == MsgType.APP_RESP and not m.reject]
    assert acks == [(1, 3)] and rd.snapshot == snapshot
