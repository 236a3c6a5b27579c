"""Log compaction and InstallSnapshot (Raft paper §7)."""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import (
    Network,
    all_msgs,
    app,
    drain,
    ents,
    log_entries,
    new_core,
    of_type,
)
from zraft.raft import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    HardState,
    LogInvariantError,
    Message,
    MsgType,
    Role,
    SnapshotMeta,
)

PLAIN = dict(pre_vote=False, check_quorum=False)


def _snap_msg(meta: SnapshotMeta, term: int, to: int = 2, frm: int = 1) -> Message:
    return Message(MsgType.SNAP, to=to, frm=frm, term=term, snapshot=meta)


def test_compaction_drops_entries_covered_by_snapshot() -> None:
    """Each server compacts independently: the committed, applied prefix of its log is replaced
    by a snapshot that records the last included index and term (and the configuration as of
    that index); later entries are kept.
    Reference: §7"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    for k in range(5):
        net.propose(1, b"p%d" % k)
    assert leader.log.applied == 6
    meta = leader.compact(4)
    assert (meta.index, meta.term, meta.conf) == (4, 1, ConfState(voters=(1, 2, 3)))
    assert leader.log.first_index() == 5
    assert leader.log.term(3) is None
    assert leader.log.term(4) == 1
    assert [i for i, _ in log_entries(leader)] == [5, 6]
    net.propose(1, b"after")
    assert net.applied_data(2)[-1] == b"after"


def test_compaction_beyond_applied_is_refused() -> None:
    """Only entries already applied to the state machine may be captured in a snapshot.
    Reference: §7"""
    core = new_core(1, **PLAIN)
    core.step(app(2, 1, term=1, index=0, log_term=0, entries=ents(1, 1, 1), commit=1))
    drain(core)
    drain(core)
    assert core.log.applied == 1
    with pytest.raises(LogInvariantError):
        core.compact(3)
    assert core.compact(1).index == 1


@pytest.mark.parametrize("guarded", [False, True])
def test_lagging_follower_is_sent_a_snapshot(guarded: bool) -> None:
    """The leader sends snapshots to followers that lag behind when it has already discarded the
    next log entry it needs to send; the follower discards its log, installs the snapshot (its
    commit and applied index jump to the snapshot's index) and then resumes normal
    replication.
    Reference: §7"""
    net = Network(pre_vote=guarded, check_quorum=guarded)
    leader = net.elect(1)
    net.isolate(3)
    for k in range(6):
        net.propose(1, b"p%d" % k)
    meta = leader.compact(leader.log.applied)
    net.storage[1].compact(meta)
    if guarded:
        net.tick(times=3 * leader.config.election_tick)  # long enough for 3 to look inactive
    net.heal()
    net.tick(times=3)
    snaps = [m for m in net.delivered if m.type == MsgType.SNAP and m.to == 3]
    assert len(snaps) == 1
    assert snaps[0].snapshot == meta
    installs = [rd for rd in net.readies[3] if rd.snapshot is not None]
    assert len(installs) == 1
    rd = installs[0]
    assert rd.snapshot == meta
    assert rd.must_sync
    assert rd.hard_state is not None and rd.hard_state.commit == meta.index
    assert rd.committed_entries == ()
    follower = net.nodes[3]
    assert follower.log.snapshot == meta
    assert follower.log.applied >= meta.index and follower.log.committed >= meta.index
    net.propose(1, b"after")
    assert net.applied_data(3) == [b"after"]
    assert log_entries(follower) == log_entries(leader)


def test_installed_snapshot_moves_commit_and_applied_after_advance() -> None:
    """A follower receiving a snapshot beyond its log discards the log, takes the snapshot's
    index as committed at once and as applied once the shell has installed it (advance);
    committed entries are not handed out before the snapshot is installed.
    Reference: §7"""
    core = new_core(2, entries=ents(1, 1), hard_state=HardState(term=1, commit=1), applied=1, **PLAIN)
    meta = SnapshotMeta(index=10, term=3, conf=ConfState(voters=(1, 2, 3), learners=(4,)))
    core.step(_snap_msg(meta, term=3))
    assert core.log.committed == 10
    rd = core.ready()
    assert rd.snapshot == meta
    assert rd.entries == () and rd.committed_entries == ()
    assert core.log.applied == 1
    resp = of_type(all_msgs(rd), MsgType.APP_RESP)
    assert [(m.to, m.index, m.reject) for m in resp] == [(1, 10, False)]
    assert resp[0] in rd.messages_after_persist
    core.advance(rd)
    assert core.log.applied == 10 and core.log.committed == 10
    assert core.log.last_index() == 10 and core.log.last_term() == 3
    assert core.conf == meta.conf
    core.step(app(1, 2, term=3, index=10, log_term=3, entries=ents(3, start=11), commit=11))
    drain(core)
    assert [e.index for e in drain(core).committed_entries] == [11]


def test_old_snapshot_is_ignored() -> None:
    """A snapshot that does not extend past what the follower has already committed carries no
    new information: the follower keeps its log and state and simply reports its commit index.
    Reference: §7"""
    core = new_core(2, **PLAIN)
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=ents(1, 1, 1, 1, 1), commit=5))
    drain(core)
    drain(core)
    before = log_entries(core)
    core.step(_snap_msg(SnapshotMeta(index=3, term=1, conf=ConfState(voters=(1, 2, 3))), term=1))
    rd = drain(core)
    assert rd.snapshot is None
    assert log_entries(core) == before
    assert core.log.snapshot.index == 0
    resp = of_type(all_msgs(rd), MsgType.APP_RESP)
    assert [(m.index, m.reject) for m in resp] == [(5, False)]


def test_snapshot_describing_a_prefix_keeps_following_entries() -> None:
    """If the follower receives a snapshot that describes a prefix of its log, the entries
    following the snapshot are still valid and must be retained.
    Reference: §7"""
    core = new_core(2, **PLAIN)
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=ents(1, 1, 1, 1, 1), commit=1))
    drain(core)
    core.step(_snap_msg(SnapshotMeta(index=3, term=1, conf=ConfState(voters=(1, 2, 3))), term=1))
    rd = drain(core)
    assert rd.snapshot is None
    assert core.log.last_index() == 5
    assert core.log.committed == 3
    resp = of_type(all_msgs(rd), MsgType.APP_RESP)
    assert [(m.index, m.reject) for m in resp] == [(3, False)]


def test_follower_replaces_conflicting_log_with_snapshot() -> None:
    """If the snapshot's last included entry is not in the follower's log (or has a different
    term), the follower discards its entire log: it is superseded by the snapshot.
    Reference: §7"""
    core = new_core(2, **PLAIN)
    core.step(app(1, 2, term=1, index=0, log_term=0, entries=ents(1, 1, 1, 1)))
    drain(core)
    meta = SnapshotMeta(index=3, term=2, conf=ConfState(voters=(1, 2, 3)))
    core.step(_snap_msg(meta, term=2, frm=3))
    rd = drain(core)
    assert rd.snapshot == meta
    assert core.log.entries == []
    assert (core.log.last_index(), core.log.last_term()) == (3, 2)
    assert core.leader == 3 and core.role == Role.FOLLOWER


def test_node_restarts_from_snapshot_and_log() -> None:
    """A restarted server recovers from its latest snapshot plus the entries after it.
    Reference: §7"""
    net = Network(**PLAIN)
    leader = net.elect(1)
    for k in range(4):
        net.propose(1, b"p%d" % k)
    follower = net.nodes[2]
    meta = follower.compact(3)
    net.storage[2].compact(meta)
    restarted = net.restart(2)
    assert restarted.log.snapshot == meta
    assert restarted.log.first_index() == 4
    assert log_entries(restarted) == [(i, t) for i, t in log_entries(leader) if i > 3]
    net.deliver_all()
    net.propose(1, b"later")
    assert net.applied_data(2)[-1] == b"later"


def test_new_member_joining_after_compaction_is_sent_a_snapshot() -> None:
    """A new server whose log is empty needs entries the leader has already discarded: the
    leader sends it a snapshot (carrying the configuration) instead, then the remaining entries.
    Reference: §7"""
    net = Network(pre_vote=True, check_quorum=True)
    leader = net.elect(1)
    for k in range(4):
        net.propose(1, b"old%d" % k)
    meta = leader.compact(leader.log.applied)
    net.storage[1].compact(meta)
    net.add_node(4)
    leader.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    net.deliver_all()
    net.propose(1, b"new")
    newcomer = net.nodes[4]
    snaps = [m for m in net.delivered if m.type == MsgType.SNAP and m.to == 4]
    assert [m.snapshot for m in snaps] == [meta]
    assert newcomer.log.snapshot == meta
    assert newcomer.conf == leader.conf == ConfState(voters=(1, 2, 3), learners=(4,))
    assert net.applied_data(4) == [b"new"]
    assert newcomer.log.applied == leader.log.applied
