"""zraft.procs.removal: only a leader tells, only non-members asking for votes are told, at
most once a second each; a told node stops campaigning until a leader sends it entries."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from zraft.procs.removal import Removal
from zraft.procs.shell import Counters
from zraft.raft import ConfState, Message, MsgType, Role
from zraft.wire.messages import MemberRemoved


@dataclass
class FakeCore:
    id: int = 1
    role: Role = Role.LEADER
    term: int = 5
    conf: ConfState = field(default_factory=lambda: ConfState((1, 2, 3)))


def removal() -> tuple[Removal, list[MemberRemoved]]:
    sent: list[MemberRemoved] = []

    def send(notice: MemberRemoved) -> bool:
        sent.append(notice)
        return True
    return Removal(send, Counters(logging.getLogger("test"))), sent


def vote_request(frm: int, kind: MsgType = MsgType.PRE_VOTE) -> Message:
    return Message(kind, to=1, frm=frm, term=6)


def test_a_leader_tells_a_non_member_once_a_second() -> None:
    part, sent = removal()
    core = FakeCore()
    part.on_raft(vote_request(4), core, 0.0)  # type: ignore[arg-type]
    part.on_raft(vote_request(4, MsgType.VOTE), core, 0.5)  # type: ignore[arg-type]
    part.on_raft(vote_request(4), core, 1.2)  # type: ignore[arg-type]
    assert sent == [MemberRemoved(1, 4, 5), MemberRemoved(1, 4, 5)]


def test_members_and_followers_tell_nobody() -> None:
    part, sent = removal()
    part.on_raft(vote_request(2), FakeCore(), 0.0)  # type: ignore[arg-type]  # a member
    part.on_raft(vote_request(4), FakeCore(role=Role.FOLLOWER), 0.0)  # type: ignore[arg-type]
    part.on_raft(Message(MsgType.APP_RESP, to=1, frm=4, term=5), FakeCore(), 0.0)  # type: ignore[arg-type]
    assert sent == []


def test_a_told_node_stops_campaigning_until_a_leader_sends_it_entries() -> None:
    part, _ = removal()
    core = FakeCore(id=4, role=Role.PRE_CANDIDATE, term=5)
    part.on_notice(MemberRemoved(1, 4, 4), core)  # type: ignore[arg-type]  # an older term: ignored
    assert part.may_campaign
    part.on_notice(MemberRemoved(1, 4, 5), core)  # type: ignore[arg-type]
    assert not part.may_campaign and part.removed_by == 1
    part.on_raft(vote_request(2), core, 0.0)
    assert not part.may_campaign
    part.on_raft(Message(MsgType.HEARTBEAT, to=4, frm=1, term=6), core, 0.0)
    assert part.may_campaign and part.removed_by == 0
