"""The shell's `defer_campaign` input: a node that cannot take writes (disk full) lets a
healthy node lead, without ever leaving a cluster with no leader at all."""

from __future__ import annotations

from tests.unit.raft.harness import Network, new_core, of_type, take_msgs, vote
from zraft.raft import MsgType, Role


def test_deferred_node_waits_two_extra_election_timeouts() -> None:
    """An undeferred follower campaigns within 2 x election_tick; a deferred one not before
    3 x election_tick, and still does by 4 x (liveness when every node is deferred)."""
    plain, deferred = new_core(1, seed=3), new_core(1, seed=3)
    deferred.defer_campaign(True)
    for _ in range(2 * 10):
        plain.tick()
    assert plain.role == Role.PRE_CANDIDATE
    for tick in range(1, 4 * 10 + 1):
        deferred.tick()
        if deferred.role == Role.PRE_CANDIDATE:
            break
    assert 3 * 10 <= tick <= 4 * 10


def test_deferred_node_ignores_timeout_now() -> None:
    """A leadership transfer to a deferred node does not make it campaign."""
    net = Network()
    net.elect(1)
    net.nodes[2].defer_campaign(True)
    net.nodes[1].transfer_leader(2)
    net.deliver_all()
    assert net.leaders() == [1]
    net.nodes[2].defer_campaign(False)
    net.tick(times=2 * 10 + 1)  # the first attempt was abandoned after an election timeout
    net.nodes[1].transfer_leader(2)
    net.deliver_all()
    assert net.leaders() == [2]


def test_deferred_node_still_votes() -> None:
    """Deferring changes only this node's own candidacy: it grants votes as usual."""
    core = new_core(2)
    core.defer_campaign(True)
    core.step(vote(1, 2, term=1, pre=False))
    replies = of_type(take_msgs(core), MsgType.VOTE_RESP)
    assert replies and not replies[0].reject
