"""Safety (Raft paper §5.4): election restriction, committing entries from previous terms,
durable votes, and the safety properties of Figure 3 checked over a seeded faulty network."""

from __future__ import annotations

import random

import pytest

from tests.unit.raft.harness import (
    NONE,
    Network,
    app_resp,
    drain,
    ents,
    log_entries,
    make_leader,
    new_core,
    of_type,
    take_msgs,
    vote,
)
from zraft.raft import EntryKind, HardState, MsgType, ProposalDropped, Role

PLAIN = dict(pre_vote=False, check_quorum=False)


@pytest.mark.parametrize(
    ("voter_log", "cand_index", "cand_term", "granted"),
    [
        ((1, 1), 2, 1, True),    # same last term, same length
        ((1, 1), 3, 1, True),    # same last term, longer
        ((1, 1), 1, 1, False),   # same last term, shorter
        ((1, 1), 1, 2, True),    # higher last term wins even when shorter
        ((1, 2), 5, 1, False),   # lower last term loses even when longer
        ((1, 2), 2, 2, True),
        ((1, 2), 1, 1, False),
        ((), 0, 0, True),
    ],
)
def test_vote_refused_to_candidate_with_less_up_to_date_log(voter_log, cand_index, cand_term, granted) -> None:
    """The voter denies its vote if its own log is more up-to-date than that of the candidate:
    if the logs have last entries with different terms, the log with the later term is more
    up-to-date; if they end with the same term, whichever log is longer is more up-to-date.
    Reference: §5.4.1"""
    core = new_core(1, entries=ents(*voter_log), hard_state=HardState(term=2), **PLAIN)
    drain(core)
    core.step(vote(2, 1, term=3, index=cand_index, log_term=cand_term))
    resps = of_type(take_msgs(core), MsgType.VOTE_RESP)
    assert len(resps) == 1
    assert resps[0].reject is not granted
    assert core.term == 3
    assert core.vote == (2 if granted else NONE)


def test_node_missing_committed_entries_cannot_be_elected() -> None:
    """The election restriction guarantees that a candidate cannot win unless its log contains
    all committed entries: a node that missed committed entries is refused by the majority that
    stores them.
    Reference: §5.4.1"""
    net = Network(**PLAIN)
    net.elect(1)
    net.isolate(3)
    for k in range(3):
        net.propose(1, b"c%d" % k)
    assert net.nodes[2].log.committed == 4
    net.heal()
    net.isolate(1)  # the old leader disappears; 3 (stale) and 2 (up to date) remain
    net.nodes[3].campaign()
    net.deliver_all()
    assert net.nodes[3].role != Role.LEADER
    # 2 can win with 3's vote, since 2's log is at least as up-to-date as 3's.
    net.nodes[2].campaign()
    net.deliver_all()
    assert net.nodes[2].role == Role.LEADER
    assert [e.data for e in net.nodes[2].log.entries if e.data][:3] == [b"c0", b"c1", b"c2"]


def test_leader_does_not_commit_previous_term_entry_by_counting_replicas() -> None:
    """Raft never commits log entries from previous terms by counting replicas. Only log entries
    from the leader's current term are committed by counting replicas; once an entry from the
    current term has been committed, all prior entries are committed indirectly.
    Reference: §5.4.2"""
    core = new_core(1, entries=ents(1, 2), hard_state=HardState(term=2, commit=1), **PLAIN)
    make_leader(core)
    assert core.term == 3
    assert log_entries(core) == [(1, 1), (2, 2), (3, 3)]
    # Both followers hold the term-2 entry (index 2), but not yet the term-3 no-op.
    core.step(app_resp(2, 1, core.term, 2))
    core.step(app_resp(3, 1, core.term, 2))
    drain(core)
    assert core.log.committed == 1
    core.step(app_resp(2, 1, core.term, 3))
    rd = drain(core)
    assert core.log.committed == 3
    assert [(e.index, e.term) for e in rd.committed_entries] == [(2, 2), (3, 3)]


def test_figure8_old_term_entry_on_majority_is_not_committed() -> None:
    """Figure 8: an entry of an older term stored on a majority may still be overwritten by a
    future leader, so a leader that knows a majority holds it must not count it as committed;
    here S5 (with a later last term) is indeed elected afterwards and overwrites it.
    Reference: §5.4.2"""
    net = Network(voters=(1, 2, 3, 4, 5), **PLAIN)
    for node, log in {1: (1, 2), 2: (1, 2), 3: (1, 2), 4: (1,), 5: (1, 3)}.items():
        net.set_log(node, ents(*log), term=4, commit=1)
    net.drop = lambda m: m.type == MsgType.APP  # votes only: S1 wins but replicates nothing
    s1 = net.elect(1)
    assert s1.term == 5
    # S1 learns that S2 and S3 hold its index 2 (term 2): a majority with S1 itself.
    s1.step(app_resp(2, 1, s1.term, 2))
    s1.step(app_resp(3, 1, s1.term, 2))
    net.deliver_all()
    assert s1.log.committed == 1, "an entry of an older term was committed by counting replicas"
    # S1 crashes; S5 can still win (its last term 3 beats 2) and overwrites index 2.
    net.heal()
    net.isolate(1)
    s5 = net.elect(5)
    net.propose(5, b"s5")
    for node in (2, 3, 4, 5):
        assert net.nodes[node].log.term(2) == 3
        assert [(e.index, e.term) for e in net.applied[node]][:2] == [(1, 1), (2, 3)]
    assert s5.term == 6


def test_new_leader_appends_and_commits_a_noop_of_its_term() -> None:
    """A leader must find out which entries are committed: Raft has each leader commit a blank
    no-op entry into the log at the start of its term; the earlier entries commit with it.
    Reference: §5.4.2"""
    net = Network(**PLAIN)
    net.set_log(1, ents(1, 1, 2), term=2)
    net.set_log(2, ents(1, 1, 2), term=2)
    net.set_log(3, ents(1), term=2)
    leader = net.elect(1)
    noop = leader.log.entry(4)
    assert (noop.term, noop.kind, noop.data) == (3, EntryKind.NORMAL, b"")
    assert leader.log.committed == 4
    assert [e.index for e in net.applied[1]] == [1, 2, 3, 4]
    assert all(n.log.committed == 4 for n in net.nodes.values())


def test_vote_survives_restart() -> None:
    """currentTerm and votedFor are persistent state, updated on stable storage before
    responding to RPCs: a node restarted from its persisted HardState and log keeps its vote
    and refuses to vote for another candidate in the same term.
    Reference: §5.2"""
    net = Network(**PLAIN)
    net.nodes[2].campaign()
    net.process(2)
    # Deliver 2's vote request to 1 only; 1's grant is persisted with its Ready.
    for m in list(net.queue):
        if m.to == 1:
            net.nodes[1].step(m)
    net.queue.clear()
    rd = net.process(1)
    assert rd is not None and rd.hard_state == HardState(term=1, vote=2, commit=0)
    assert rd.must_sync
    restarted = net.restart(1)
    assert (restarted.term, restarted.vote) == (1, 2)
    restarted.step(vote(3, 1, term=1, index=0, log_term=0))
    resps = of_type(take_msgs(restarted), MsgType.VOTE_RESP)
    assert [(m.to, m.reject) for m in resps] == [(3, True)]
    restarted.step(vote(2, 1, term=1, index=0, log_term=0))
    resps = of_type(take_msgs(restarted), MsgType.VOTE_RESP)
    assert [(m.to, m.reject) for m in resps] == [(2, False)]


def test_restart_keeps_log_and_commit() -> None:
    """The log and the commit index recovered from storage survive a restart: the node replays
    its committed entries and keeps accepting AppendEntries where it left off.
    Reference: §5.3"""
    net = Network(**PLAIN)
    net.elect(1)
    for k in range(3):
        net.propose(1, b"r%d" % k)
    before = log_entries(net.nodes[3])
    restarted = net.restart(3)
    assert log_entries(restarted) == before
    net.deliver_all()
    assert net.applied_data(3) == [b"r0", b"r1", b"r2"]
    net.propose(1, b"r3")
    assert net.applied_data(3) == [b"r0", b"r1", b"r2", b"r3"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("prevote", [False, True])
def test_safety_properties_hold_under_random_faults(seed: int, prevote: bool) -> None:
    """Figure 3's guarantees hold whatever the network does: Election Safety (at most one leader
    per term), Log Matching (same index and term implies identical prefixes), Leader
    Completeness (a leader holds every committed entry) and State Machine Safety (no two nodes
    apply different entries at the same index).
    Reference: §5.4.3"""
    rng = random.Random(seed)
    net = Network(voters=(1, 2, 3, 4, 5), seed=seed, pre_vote=prevote, check_quorum=prevote)
    net.drop = lambda m: rng.random() < 0.15
    leader_of_term: dict[int, int] = {}
    committed: dict[int, tuple[int, bytes]] = {}
    proposals = 0
    for step in range(300):
        if step % 40 == 0:
            net.isolated.clear()
            for node in rng.sample(sorted(net.nodes), rng.choice([0, 1, 2])):
                net.isolate(node)
        if step % 97 == 50:
            net.restart(rng.choice(sorted(net.nodes)))
        net.tick()
        for node, core in net.nodes.items():
            if core.role == Role.LEADER:
                assert leader_of_term.setdefault(core.term, node) == node, "two leaders in one term"
                if rng.random() < 0.5:
                    try:
                        core.propose(b"p%d" % proposals)
                        proposals += 1
                    except ProposalDropped:
                        pass
        net.deliver_all()
        for node, applied in net.applied.items():
            for entry in applied:
                seen = committed.setdefault(entry.index, (entry.term, entry.data))
                assert seen == (entry.term, entry.data), f"node {node} applied a different entry"
        newest = max(core.term for core in net.nodes.values())
        for core in net.nodes.values():
            if core.role == Role.LEADER and core.term == newest:
                for index, (term, _) in committed.items():
                    assert core.log.term(index) == term, "leader lacks a committed entry"
    cores = list(net.nodes.values())
    for a in cores:
        for b in cores:
            common = min(a.log.last_index(), b.log.last_index())
            for index in range(common, 0, -1):
                if a.log.term(index) == b.log.term(index):
                    assert log_entries(a)[:index] == log_entries(b)[:index]
                    break
    assert len(leader_of_term) >= 1
    assert len(committed) > 5
