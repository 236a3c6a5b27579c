"""Linearizable reads with read-index (dissertation §6.4)."""

from __future__ import annotations

from tests.unit.raft.harness import (
    Network,
    all_msgs,
    app_resp,
    drain,
    make_leader,
    new_core,
    of_type,
)
from zraft.raft import Message, MsgType, ReadState, Role

PLAIN = dict(pre_vote=False, check_quorum=False)


def _read_beats(msgs) -> list[Message]:
    return [m for m in msgs if m.type == MsgType.HEARTBEAT and m.context != 0]


def _answer(follower, beat: Message) -> Message:
    follower.step(beat)
    resps = of_type(all_msgs(drain(follower)), MsgType.HEARTBEAT_RESP)
    assert len(resps) == 1 and resps[0].context == beat.context
    return resps[0]


def test_leader_serves_read_after_heartbeat_quorum() -> None:
    """The leader records its current commit index as the readIndex, then sends a round of
    heartbeats; once a majority acknowledges them it knows it was still leader when the read was
    requested, and the read may proceed at readIndex.
    Reference: dissertation §6.4"""
    net = Network(voters=(1, 2, 3), **PLAIN)
    leader = net.elect(1)
    commit = leader.log.committed
    assert leader.read_index(7) is True
    rd = leader.ready()
    assert rd.read_states == ()
    beats = _read_beats(all_msgs(rd))
    assert sorted(m.to for m in beats) == [2, 3]
    leader.advance(rd)
    leader.step(_answer(net.nodes[2], next(m for m in beats if m.to == 2)))
    rd = drain(leader)
    assert rd.read_states == (ReadState(index=commit, request_id=7),)


def test_read_waits_for_a_majority_not_just_one_ack() -> None:
    """The read is released only once a majority of the cluster (leader included) confirmed the
    round: in a 5-node cluster one follower's acknowledgement is not enough.
    Reference: dissertation §6.4"""
    net = Network(voters=(1, 2, 3, 4, 5), **PLAIN)
    leader = net.elect(1)
    leader.read_index(1)
    rd = drain(leader)
    beats = {m.to: m for m in _read_beats(all_msgs(rd))}
    assert sorted(beats) == [2, 3, 4, 5]
    leader.step(_answer(net.nodes[2], beats[2]))
    leader.step(_answer(net.nodes[2], beats[2]))  # a duplicate ack counts once
    assert drain(leader).read_states == ()
    leader.step(_answer(net.nodes[3], beats[3]))
    assert drain(leader).read_states == (ReadState(leader.log.committed, 1),)


def test_reads_before_one_ready_share_one_heartbeat_round() -> None:
    """Read-only requests can be batched: every read queued before the next Ready is confirmed
    by a single round of heartbeats (one heartbeat per follower).
    Reference: dissertation §6.4"""
    net = Network(voters=(1, 2, 3), **PLAIN)
    leader = net.elect(1)
    start = len(net.sent)
    for request in range(1, 6):
        assert leader.read_index(request)
    net.deliver_all()
    beats = _read_beats(net.sent[start:])
    assert len(beats) == 2
    assert len({m.context for m in beats}) == 1
    states = net.read_states[1]
    assert sorted(s.request_id for s in states) == [1, 2, 3, 4, 5]
    assert {s.index for s in states} == {leader.log.committed}


def test_new_leader_serves_reads_only_after_committing_an_entry_of_its_term() -> None:
    """A new leader does not know the latest commit index until it has committed an entry of
    its own term (its no-op): reads requested before that wait, and are then served at an
    index no lower than that entry.
    Reference: dissertation §6.4"""
    core = new_core(1, **PLAIN)
    make_leader(core)
    assert core.log.committed == 0
    core.read_index(42)
    rd = drain(core)
    assert rd.read_states == ()
    assert _read_beats(all_msgs(rd)) == []
    core.step(app_resp(2, 1, core.term, 1))  # the no-op (index 1) commits
    assert core.log.committed == 1
    rd = drain(core)
    beats = _read_beats(all_msgs(rd))
    assert sorted(m.to for m in beats) == [2, 3]
    assert rd.read_states == ()
    core.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=3, term=core.term, context=beats[0].context))
    assert drain(core).read_states == (ReadState(1, 42),)


def test_follower_read_index_is_forwarded_to_the_leader() -> None:
    """A follower serving a read asks the leader for the current readIndex; the leader confirms
    its leadership with a heartbeat round and answers, and the follower gets a ReadState.
    Reference: dissertation §6.4"""
    net = Network(voters=(1, 2, 3), **PLAIN)
    leader = net.elect(1)
    net.propose(1, b"a")
    assert net.nodes[2].read_index(9) is True
    net.deliver_all()
    forwarded = [m for m in net.delivered if m.type == MsgType.READ_INDEX]
    assert [(m.frm, m.to, m.context) for m in forwarded] == [(2, 1, 9)]
    assert net.read_states[2] == [ReadState(leader.log.committed, 9)]
    assert net.read_states[1] == []


def test_read_index_without_known_leader_is_refused() -> None:
    """A server that knows no leader cannot obtain a readIndex; the request is refused at once.
    Reference: dissertation §6.4"""
    core = new_core(2, **PLAIN)
    assert core.read_index(1) is False
    assert not core.has_ready()


def test_single_node_read_needs_no_round() -> None:
    """In a single-server cluster the leader is its own majority: once it committed an entry of
    its term, a read is answered without any message.
    Reference: dissertation §6.4"""
    core = new_core(1, voters=(1,), **PLAIN)
    core.campaign()
    for _ in range(3):
        drain(core)
    assert core.role == Role.LEADER and core.log.committed == 1
    core.read_index(5)
    rd = drain(core)
    assert rd.read_states == (ReadState(1, 5),)
    assert all_msgs(rd) == []
