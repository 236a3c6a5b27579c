"""Blank-start recovery (RaftConfig.recover_blank; zraft/raft/DESIGN.md, "A node that lost
everything"): a voter that starts with no durable state (a new node, or one whose data folder
was wiped) votes for nobody and does not campaign until every other voter has told it its term
and last log id (or its floor). Then it takes the highest term as one it may have voted in and
the highest log id as its vote floor, and is an ordinary node with a floor.
"""

from __future__ import annotations

from tests.unit.raft.harness import drain, ents, new_core, of_type, take_msgs, vote
from zraft.raft import HardState, Message, MsgType, RaftCore, Role
from zraft.raft.core import RECOVERY_FLOOR

PLAIN = dict(pre_vote=False, check_quorum=False)


def blank(node: int = 1, voters: tuple[int, ...] = (1, 2, 3), **cfg: object) -> RaftCore:
    return new_core(node, voters, recover_blank=True, **PLAIN, **cfg)  # type: ignore[arg-type]


def queries(core: RaftCore) -> list[Message]:
    core.tick()
    return of_type(take_msgs(core), MsgType.STATE_QUERY)


def reply(query: Message, term: int, last: tuple[int, int]) -> Message:
    return Message(MsgType.STATE_REPLY, to=query.frm, frm=query.to, term=term, log_term=last[0],
                   index=last[1], context=query.context)


def test_a_blank_voter_neither_votes_nor_campaigns_and_asks_every_other_voter() -> None:
    core = blank()
    assert core.recovering and core.vote_floor == RECOVERY_FLOOR
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.vote_floor() == RECOVERY_FLOOR and rd.must_sync
    core.advance(rd)
    asked = queries(core)
    assert sorted(m.to for m in asked) == [2, 3] and len({m.context for m in asked}) == 1
    core.step(vote(2, 1, term=5, index=100, log_term=4))
    grants = [m for m in of_type(take_msgs(core), MsgType.VOTE_RESP) if not m.reject]
    assert not grants and core.vote == 0
    for _ in range(100):
        core.tick()
    core.campaign()
    assert core.role == Role.FOLLOWER and not of_type(take_msgs(core), MsgType.VOTE, MsgType.PRE_VOTE)


def test_after_every_answer_it_takes_the_highest_term_as_voted_and_the_highest_log_id_as_floor() -> None:
    core = blank()
    drain(core)
    asked = {m.to: m for m in queries(core)}
    core.step(reply(asked[2], term=7, last=(6, 40)))
    assert core.recovering  # one voter is not enough: the candidate it voted for may be the other
    core.step(reply(asked[3], term=5, last=(5, 90)))
    assert not core.recovering
    assert (core.term, core.vote, core.vote_floor) == (7, 1, (6, 40))
    rd = core.ready()
    assert rd.hard_state == HardState(term=7, vote=1, commit=0, floor_term=6, floor_index=40) and rd.must_sync
    core.advance(rd)
    core.step(vote(3, 1, term=7, index=90, log_term=5))  # term 7: it may have voted in it already
    assert core.vote == 1
    core.step(vote(2, 1, term=8, index=39, log_term=6))  # below the floor
    core.step(vote(3, 1, term=9, index=40, log_term=6))  # at the floor, a later term: granted
    drain(core)
    assert (core.term, core.vote) == (9, 3)


def test_an_answer_to_an_earlier_incarnations_question_is_ignored() -> None:
    core = blank()
    drain(core)
    asked = {m.to: m for m in queries(core)}
    stale = reply(asked[2], term=3, last=(3, 10))
    stale.context += 1
    core.step(stale)
    core.step(reply(asked[3], term=3, last=(3, 10)))
    assert core.recovering


def test_recovery_survives_a_restart_that_kept_a_term_learned_meanwhile() -> None:
    core = blank()
    rd = core.ready()
    core.advance(rd)
    core.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=4))  # a leader's term is learned and persisted
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.term == 4
    restarted = new_core(1, (1, 2, 3), hard_state=rd.hard_state, recover_blank=True, **PLAIN)  # type: ignore[arg-type]
    assert restarted.recovering  # not blank any more, but its floor says it has not recovered


def test_a_floor_stands_in_for_entries_in_an_answer() -> None:
    damaged = new_core(2, (1, 2, 3), entries=ents(1, 1), hard_state=HardState(term=2, floor_term=2, floor_index=5),
                       recover_blank=True, **PLAIN)  # type: ignore[arg-type]
    drain(damaged)
    damaged.step(Message(MsgType.STATE_QUERY, to=2, frm=1, term=0, context=77))
    [answer] = of_type(take_msgs(damaged), MsgType.STATE_REPLY)
    assert (answer.log_term, answer.index, answer.context) == (2, 5, 77)


def test_a_single_node_and_a_node_with_state_need_no_recovery() -> None:
    assert not blank(voters=(1,)).recovering
    assert not new_core(1, (1, 2, 3), entries=ents(1), recover_blank=True).recovering
    assert not new_core(1, (1, 2, 3)).recovering  # recover_blank is off by default


def test_with_five_voters_the_floor_is_the_second_highest_answer() -> None:
    """An entry that can have committed is on three of five voters, so on at least two of the
    four others: the second highest log id they give is at least its. The highest may stand
    for entries on one voter alone, which must not hold the others back."""
    core = blank(voters=(1, 2, 3, 4, 5))
    drain(core)
    asked = {m.to: m for m in queries(core)}
    for node, last in zip((2, 3, 4, 5), ((3, 10), (3, 40), (3, 20), (3, 30)), strict=True):
        core.step(reply(asked[node], term=3, last=last))
    assert not core.recovering and core.vote_floor == (3, 30)
