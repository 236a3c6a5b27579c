"""Log replication (Raft paper §5.3), plus the leader's flow control (pipelining and probing).

One test per rule; single cores are fed hand-made AppendEntries where the rule is about what
one node does, a Network is used where the rule is about convergence.
"""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import (
    Network,
    all_msgs,
    app,
    app_resp,
    drain,
    ents,
    log_entries,
    make_leader,
    new_core,
    of_type,
    take_msgs,
)
from zraft.raft import Entry, HardState, MsgType
from zraft.raft.types import ProgressState

PLAIN = dict(pre_vote=False, check_quorum=False)


def _leader(voters=(1, 2, 3), **cfg):
    core = new_core(1, voters, **{**PLAIN, **cfg})
    make_leader(core)
    return core


def _ack_all(core, index: int) -> list:
    """Every follower acknowledges `index`; returns the messages the leader emitted."""
    for v in core.conf.voters:
        if v != core.id:
            core.step(app_resp(v, core.id, core.term, index))
    return take_msgs(core)


def test_leader_appends_proposal_and_replicates_it() -> None:
    """The leader appends the command to its log as a new entry, then issues AppendEntries RPCs
    in parallel to each of the other servers to replicate the entry; each carries the index and
    term of the entry immediately preceding the new ones and the leader's commit index.
    Reference: §5.3"""
    core = _leader()
    _ack_all(core, 1)  # followers now match the no-op and are in replicate state
    drain(core)
    index = core.propose(b"cmd")
    rd = drain(core)
    assert index == 2
    assert [(e.index, e.term, e.data) for e in rd.entries] == [(2, 1, b"cmd")]
    apps = of_type(all_msgs(rd), MsgType.APP)
    assert sorted(m.to for m in apps) == [2, 3]
    for m in apps:
        assert (m.index, m.log_term, m.commit) == (1, 1, 1)
        assert [(e.index, e.term, e.data) for e in m.entries] == [(2, 1, b"cmd")]


def test_leader_commits_entry_once_replicated_on_majority() -> None:
    """When the entry has been safely replicated on a majority of servers, the leader applies
    the entry to its state machine and returns the result; the leader keeps track of the
    highest index it knows to be committed and includes it in future AppendEntries.
    Reference: §5.3"""
    core = _leader()
    _ack_all(core, 1)
    drain(core)
    core.propose(b"a")
    drain(core)
    assert core.log.committed == 1
    core.step(app_resp(2, 1, core.term, 2))
    rd = drain(core)
    assert core.log.committed == 2
    assert [e.data for e in rd.committed_entries] == [b"a"]
    assert rd.hard_state is not None and rd.hard_state.commit == 2
    apps = of_type(all_msgs(rd), MsgType.APP)
    assert {m.to for m in apps} == {2, 3}
    assert all(m.commit == 2 for m in apps)


@pytest.mark.parametrize(
    ("size", "acks", "committed"),
    [
        (1, (), True),
        (3, (), False),
        (3, (2,), True),
        (3, (2, 3), True),
        (5, (), False),
        (5, (2,), False),
        (5, (2, 3), True),
        (5, (2, 3, 4, 5), True),
    ],
)
def test_leader_commit_needs_majority_of_acks(size: int, acks, committed: bool) -> None:
    """A log entry is committed once the leader that created the entry has replicated it on a
    majority of the servers (the leader itself counting as one).
    Reference: §5.3"""
    core = _leader(tuple(range(1, size + 1)))
    for v in range(2, size + 1):
        core.step(app_resp(v, 1, core.term, 1))
    drain(core)
    core.propose(b"x")
    drain(core)
    for v in acks:
        core.step(app_resp(v, 1, core.term, 2))
    drain(core)
    assert (core.log.committed == 2) is committed


def test_leader_commit_includes_preceding_entries() -> None:
    """Committing an entry also commits all preceding entries in the leader's log, including
    entries created by previous leaders.
    Reference: §5.3"""
    prior = ents(1, 2, 2)
    core = new_core(1, entries=prior, hard_state=HardState(term=2), **PLAIN)
    make_leader(core)
    assert core.term == 3 and core.log.last_index() == 4
    core.propose(b"new")
    drain(core)
    core.step(app_resp(2, 1, core.term, 5))
    rd = drain(core)
    assert core.log.committed == 5
    assert [(e.index, e.term) for e in rd.committed_entries] == [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)]


def test_follower_commits_up_to_leader_commit() -> None:
    """Once a follower learns that a log entry is committed, it applies the entry to its local
    state machine (in log order, once the entry is durable); it never commits beyond the last
    entry the leader sent it.
    Reference: §5.3"""
    core = new_core(2, **PLAIN)
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=ents(1, 1, 1), commit=2))
    assert core.log.committed == 2
    applied = [e.index for e in drain(core).committed_entries]
    applied += [e.index for e in drain(core).committed_entries]
    assert applied == [1, 2]
    core.step(app(1, 2, term=1, index=3, log_term=1, entries=ents(1, start=4), commit=10))
    assert core.log.committed == 4
    applied = [e.index for e in drain(core).committed_entries]
    applied += [e.index for e in drain(core).committed_entries]
    assert applied == [3, 4]


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "reject"),
    [
        (0, 0, False),
        (1, 1, False),
        (2, 2, False),
        (1, 2, True),   # term mismatch at index 1
        (2, 1, True),   # term mismatch at index 2
        (3, 2, True),   # follower lacks index 3
        (5, 2, True),   # ... nor index 5 (a previous term above the leader's would be refused
                        # as impossible: test_validate.py)
    ],
)
def test_follower_rejects_append_with_mismatching_prev(prev_index: int, prev_term: int, reject: bool) -> None:
    """When sending an AppendEntries RPC, the leader includes the index and term of the entry in
    its log that immediately precedes the new entries. If the follower does not find an entry in
    its log with the same index and term, then it refuses the new entries.
    Reference: §5.3"""
    core = new_core(2, entries=ents(1, 2), hard_state=HardState(term=2), **PLAIN)
    drain(core)
    core.step(app(1, 2, term=2, index=prev_index, log_term=prev_term, entries=ents(2, start=prev_index + 1)))
    resps = of_type(take_msgs(core), MsgType.APP_RESP)
    assert len(resps) == 1
    assert resps[0].reject is reject
    if reject:
        assert resps[0].index == prev_index
        assert log_entries(core) == [(1, 1), (2, 2)]
    else:
        assert resps[0].index == prev_index + 1
        assert core.log.last_index() == prev_index + 1


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "new", "want", "unstable"),
    [
        (2, 2, [(3, 3)], [(1, 1), (2, 2), (3, 3)], [(3, 3)]),
        (1, 1, [(2, 3), (3, 4)], [(1, 1), (2, 3), (3, 4)], [(2, 3), (3, 4)]),
        (0, 0, [(1, 1)], [(1, 1), (2, 2)], []),
        (0, 0, [(1, 3)], [(1, 3)], [(1, 3)]),
        (0, 0, [(1, 1), (2, 2)], [(1, 1), (2, 2)], []),
    ],
)
def test_follower_deletes_conflicting_entries_and_appends_new(prev_index, prev_term, new, want, unstable) -> None:
    """If an existing entry conflicts with a new one (same index but different terms), the
    follower deletes the existing entry and all that follow it, then appends any new entries not
    already in the log; entries that already match are kept untouched.
    Reference: §5.3"""
    core = new_core(2, entries=ents(1, 2), hard_state=HardState(term=2), **PLAIN)
    drain(core)
    entries = [Entry(term=t, index=i, data=b"n") for i, t in new]
    core.step(app(1, 2, term=4, index=prev_index, log_term=prev_term, entries=entries))
    assert log_entries(core) == want
    rd = drain(core)
    assert [(e.index, e.term) for e in rd.entries] == unstable
    resp = of_type(all_msgs(rd), MsgType.APP_RESP)
    assert len(resp) == 1 and not resp[0].reject


def test_follower_ignores_stale_append_that_would_truncate_matching_suffix() -> None:
    """A delayed AppendEntries carrying a prefix of what the follower already has must not cut
    the follower's log back: only a conflicting entry causes truncation.
    Reference: §5.3"""
    core = new_core(2, **PLAIN)
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=ents(1, 1, 1)))
    drain(core)
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=ents(1)))
    assert log_entries(core) == [(1, 1), (2, 1), (3, 1)]
    resp = of_type(take_msgs(core), MsgType.APP_RESP)
    assert len(resp) == 1 and not resp[0].reject and resp[0].index == 1


# Figure 7 of the paper: the leader's log for term 8, and followers a-f.
FIG7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIG7_FOLLOWERS = {
    "a": (1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": (1, 1, 1, 4),
    "c": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": (1, 1, 1, 4, 4, 4, 4),
    "f": (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


@pytest.mark.parametrize("name", sorted(FIG7_FOLLOWERS))
def test_leader_brings_divergent_follower_log_into_consistency(name: str) -> None:
    """The leader handles inconsistencies by forcing the followers' logs to duplicate its own:
    it finds the latest entry where the two logs agree, the follower deletes entries after that
    point and the leader sends all of its entries after it (Figure 7's followers a-f).
    Reference: §5.3"""
    net = Network(**PLAIN)
    net.set_log(1, ents(*FIG7_LEADER), term=7)
    net.set_log(2, ents(*FIG7_FOLLOWERS[name]), term=7)
    net.set_log(3, ents(*FIG7_LEADER), term=7)
    net.elect(1)
    net.propose(1, b"after")
    leader = net.nodes[1]
    assert leader.term == 8
    assert log_entries(net.nodes[2]) == log_entries(leader)
    assert net.nodes[2].log.committed == leader.log.committed == leader.log.last_index()


def test_fast_backoff_skips_a_whole_conflicting_term_per_round_trip() -> None:
    """After a rejection, the follower tells the leader the term of the conflicting entry and
    where its entries of that term begin, so the leader bypasses all conflicting entries of that
    term with one AppendEntries per term rather than one per entry.
    Reference: §5.3"""
    stale_tail = ents(1, *([2] * 50))
    leader_log = ents(1, *([3] * 50))
    net = Network(**PLAIN)
    net.set_log(1, leader_log, term=3)
    net.set_log(2, stale_tail, term=3)
    net.set_log(3, leader_log, term=3)
    net.elect(1)
    rejects = [m for m in net.delivered if m.type == MsgType.APP_RESP and m.frm == 2 and m.reject]
    assert log_entries(net.nodes[2]) == log_entries(net.nodes[1])
    assert 1 <= len(rejects) <= 2, f"{len(rejects)} rejections to skip one term of 50 entries"


def test_leader_never_overwrites_its_own_log() -> None:
    """Leader Append-Only: a leader never overwrites or deletes entries in its log; it only
    appends new entries, whatever its followers hold and whatever they answer.
    Reference: §5.3"""
    for name, follower_log in sorted(FIG7_FOLLOWERS.items()):
        net = Network(**PLAIN)
        net.set_log(1, ents(*FIG7_LEADER), term=7)
        net.set_log(2, ents(*follower_log), term=7)
        net.set_log(3, ents(*FIG7_LEADER), term=7)
        leader = net.elect(1)
        before = log_entries(leader)
        assert before[: len(FIG7_LEADER)] == [(i + 1, t) for i, t in enumerate(FIG7_LEADER)], name
        # A rejection pointing far back (as a confused follower might send) must not cut it.
        leader.step(app_resp(2, 1, leader.term, 3, reject=True, reject_hint=0, log_term=0))
        for _ in range(3):
            net.propose(1, b"p")
            net.tick()
        after = log_entries(leader)
        assert after[: len(before)] == before, name
        assert len(after) == len(before) + 3, name
        assert log_entries(net.nodes[2]) == after, name


def test_replicate_state_pipelines_up_to_max_inflight_then_pauses() -> None:
    """Pipelining: once the leader knows where a follower's log matches, it streams
    AppendEntries without waiting for acknowledgements, up to max_inflight unacknowledged
    messages, then pauses until acknowledgements free room.
    Reference: dissertation §10.2.2"""
    net = Network(max_inflight=3, **PLAIN)
    net.elect(1)
    leader = net.nodes[1]
    assert leader.progress[2].state == ProgressState.REPLICATE
    net.isolate(2)
    net.isolate(3)
    start = len(net.sent)
    for k in range(8):
        leader.propose(b"p%d" % k)
        net.process(1)
    apps_to_2 = [m for m in net.sent[start:] if m.type == MsgType.APP and m.to == 2]
    assert len(apps_to_2) == 3
    assert all(m.entries for m in apps_to_2)
    # An acknowledgement of the first frees one slot: exactly one more APP goes out.
    first = apps_to_2[0].entries[-1].index
    start = len(net.sent)
    leader.step(app_resp(2, 1, leader.term, first))
    net.process(1)
    more = [m for m in net.sent[start:] if m.type == MsgType.APP and m.to == 2]
    assert len(more) == 1


def test_replicate_state_also_pauses_at_max_inflight_bytes() -> None:
    """Flow control in bytes as well as in messages: large entries stop the pipeline once the
    unacknowledged entry data reaches max_inflight_bytes, so that a follower persisting them
    never has a heartbeat queued behind more than that; one message always goes, however
    large, and an acknowledgement frees its bytes.
    Reference: dissertation §10.2.2 (pipelining); etcd's MaxInflightBytes"""
    net = Network(max_inflight=64, max_msg_bytes=1000, max_inflight_bytes=2500, **PLAIN)
    net.elect(1)
    leader = net.nodes[1]
    net.isolate(2)
    net.isolate(3)
    start = len(net.sent)
    for k in range(6):
        leader.propose(bytes([k]) * 1000)
        net.process(1)
    apps_to_2 = [m for m in net.sent[start:] if m.type == MsgType.APP and m.to == 2 and m.entries]
    assert [len(m.entries) for m in apps_to_2] == [1, 1, 1]  # 3,000 bytes: the third reached the bound
    start = len(net.sent)
    leader.step(app_resp(2, 1, leader.term, apps_to_2[1].entries[-1].index))  # frees 2,000 bytes
    net.process(1)
    more = [m for m in net.sent[start:] if m.type == MsgType.APP and m.to == 2 and m.entries]
    assert more and leader.progress[2].inflight_bytes <= 2500 + 1000
    big = Network(max_inflight=64, max_msg_bytes=1000, max_inflight_bytes=10, **PLAIN)
    big.elect(1)
    big.isolate(2)
    big.isolate(3)
    start = len(big.sent)
    big.nodes[1].propose(b"x" * 5000)  # larger than the bound: it still goes, alone
    big.process(1)
    assert len([m for m in big.sent[start:] if m.type == MsgType.APP and m.to == 2 and m.entries]) == 1


def test_probe_state_sends_one_append_at_a_time() -> None:
    """While the leader does not yet know where a follower's log matches its own (probe state),
    it sends one AppendEntries at a time and waits for the answer before the next.
    Reference: §5.3"""
    core = _leader()
    assert core.progress[2].state == ProgressState.PROBE
    for k in range(5):
        core.propose(b"x%d" % k)
    msgs = take_msgs(core)
    assert not [m for m in msgs if m.type == MsgType.APP and m.to == 2]
    core.step(app_resp(2, 1, core.term, 0, reject=True, reject_hint=0))
    msgs = take_msgs(core)
    apps = [m for m in msgs if m.type == MsgType.APP and m.to == 2]
    assert len(apps) == 1
    assert apps[0].index == 0
    core.step(app_resp(2, 1, core.term, core.log.last_index()))
    assert core.progress[2].state == ProgressState.REPLICATE
    assert core.progress[2].match == core.log.last_index()
