"""The peer fuzzer's messages against the pure Raft core, in process: three cores on the unit
harness's in-memory network (tests/unit/raft/harness.py) elect a leader and commit, while
hypothesis interleaves ticks, proposals and adversarial messages (test_peer_fuzz_support:
`messages`, `hand_picked`, made harmless where they would be forgeries by `neutralize`).

The same properties as the live fuzzer (test_peer_fuzz.py), thousands of cases a minute, and
hypothesis shrinks a failure to a minimal message:
- no core raises, and each refuses (counts in `RaftCore.refused`) every message that
  `impossible` says no correct peer sends;
- every message a core emits can be encoded (the wire carries 64-bit numbers: a term of
  2**64 - 1 plus one cannot be sent, and would end the raft process) and every hard state
  fits the log store's 64-bit fields;
- what any two nodes applied agrees on their common prefix;
- after the fuzzing stops, the cluster elects a leader and commits a new entry on every node.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.component.test_peer_fuzz_support import U64, View, hand_picked, impossible, messages, neutralize
from tests.unit.raft.harness import Network
from zraft.raft import Role
from zraft.raft.types import Message
from zraft.wire.codec import encode

NODES = (1, 2, 3)
HEAL_TICKS = 400


def view_of(net: Network, node: int) -> View:
    core = net.nodes[node]
    return View(node, tuple(n for n in NODES if n != node), core.term, core.log.committed, core.log.last_index())


def check(net: Network, sent_before: int) -> None:
    for msg in net.sent[sent_before:]:
        try:
            encode(msg)
        except (TypeError, ValueError, OverflowError) as exc:
            raise AssertionError(f"node {msg.frm} emitted a message the wire cannot carry ({exc}): {msg}") from None
    for node, storage in net.storage.items():
        hs = storage.hard_state
        assert max(hs.term, hs.vote, hs.commit, hs.floor_term, hs.floor_index) <= U64, (node, hs)
    applied = {n: [(e.index, e.term, e.data) for e in net.applied[n]] for n in NODES}
    for a in NODES:
        for b in NODES:
            common = min(len(applied[a]), len(applied[b]))
            assert applied[a][:common] == applied[b][:common], f"nodes {a} and {b} applied different entries"


def heal_and_commit(net: Network) -> None:
    """Tick until one leader commits a new entry on every node; fail after HEAL_TICKS."""
    proposed = None
    for _ in range(HEAL_TICKS):
        net.tick()
        leaders = net.leaders()
        if proposed is None and len(leaders) == 1:
            try:
                proposed = net.nodes[leaders[0]].propose(b"after the fuzz")
            except Exception:  # ProposalDropped: a transfer, say; try again next tick
                proposed = None
            net.deliver_all()
        if proposed is not None and all(any(e.data == b"after the fuzz" for e in net.applied[n]) for n in NODES):
            return
    terms = {n: (net.nodes[n].term, net.nodes[n].role.name, net.nodes[n].log.last_index()) for n in NODES}
    raise AssertionError(f"the cluster did not commit within {HEAL_TICKS} ticks after the fuzz: {terms}")


def started(seed: int) -> Network:
    net = Network(seed=seed, pre_vote=True, check_quorum=True)
    net.elect(1)
    for k in range(3):
        net.propose(1, f"before {k}".encode())
    return net


def step(net: Network, node: int, msg: Message, in_hypothesis: bool = True) -> None:
    before = len(net.sent)
    if in_hypothesis:
        note(f"to node {node} ({net.nodes[node].role.name}, term {net.nodes[node].term}): {msg}")
    core = net.nodes[node]
    refused = core.refused
    core.step(msg)
    reason = impossible(msg)
    assert reason is None or core.refused == refused + 1, f"node {node} took {reason}: {msg}"
    net.deliver_all()
    check(net, before)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_core_survives_adversarial_messages(data: st.DataObject) -> None:
    fuzz_a_cluster(data)


def fuzz_a_cluster(data: st.DataObject) -> None:
    net = started(data.draw(st.integers(0, 1000), label="seed"))
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        action = data.draw(st.sampled_from(("fuzz", "fuzz", "fuzz", "tick", "propose")))
        if action == "tick":
            before = len(net.sent)
            net.tick(times=data.draw(st.integers(1, 15)))
            check(net, before)
        elif action == "propose":
            leaders = [n for n in net.leaders() if net.nodes[n].lead_transferee == 0]
            if leaders:
                net.propose(leaders[0], b"during the fuzz")
        else:
            node = data.draw(st.sampled_from(NODES))
            msg = neutralize(data.draw(messages(view_of(net, node))), view_of(net, node))
            if msg is not None:
                step(net, node, msg)
    heal_and_commit(net)


CASE_NAMES = [name for name, _ in hand_picked(View(2, (1, 3), 2, 4, 5), 1)]


ROUTES = [(1, 3), (1, 7), (2, 1), (2, 3), (2, 7)]
"""(receiver, sender): to the leader (node 1) from a follower and from a stranger, to a
follower from the leader, from the other follower and from a stranger."""


@pytest.mark.parametrize("target, frm", ROUTES, ids=[f"{f}->{t}" for t, f in ROUTES])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_a_hand_picked_message(case: str, target: int, frm: int) -> None:
    net = started(0)
    view = view_of(net, target)
    msg = neutralize(dict(hand_picked(view, frm))[case], view)
    if msg is not None:
        step(net, target, msg, in_hypothesis=False)
    heal_and_commit(net)
    assert len(net.leaders()) == 1 and net.nodes[net.leaders()[0]].role == Role.LEADER


LONG_MINUTES = float(os.environ.get("ZRAFT_FUZZ_MINUTES", "0") or 0)


@pytest.mark.slow
@pytest.mark.skipif(not LONG_MINUTES, reason="set ZRAFT_FUZZ_MINUTES to run the long peer fuzz")
@pytest.mark.timeout(int(LONG_MINUTES * 60) + 600)
def test_the_core_survives_adversarial_messages_long() -> None:
    """The property above for ZRAFT_FUZZ_MINUTES, in runs of 200 fresh cases."""
    deadline = time.monotonic() + LONG_MINUTES * 60
    runs = 0

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def some_clusters(data: st.DataObject) -> None:
        fuzz_a_cluster(data)

    while time.monotonic() < deadline:
        some_clusters()
        runs += 1
    print(f"\ncore peer fuzz: {runs * 200} cases in {LONG_MINUTES} minutes")
