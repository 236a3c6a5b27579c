"""Bad peer messages (issue 10): a fuzzer feeds malformed and adversarial Raft messages to the
peer ports of a live 3-node raft-only cluster while a client keeps proposing on the leader.

Senders: DEALERs with the routing id of a real peer (the link check passes; such a DEALER
takes the real peer's link over, which stays dead until that peer's heartbeats notice, about
4 s, so it lives for one batch only) and with unknown ids (4, 7, 99, 2**62: kept open, so that
everything they send is delivered and can be counted exactly). What is sent, and why no forgery is (test_peer_fuzz_support's doc):
- hand-picked: every wire defect of `wire_cases` and `extra_frame_cases`, and every message of
  `hand_picked` (impossible indexes and terms, commit points and hints beyond the log,
  impossible snapshots and configurations, answers nobody asked for, far future terms), to
  each node, from a stranger and from a real peer; then frames above and just below the peer
  inbox's cap;
- drawn: batches of hypothesis-drawn `messages` (every type, adversarial field combinations)
  and `wire_garbage`, to random nodes from random senders, for as long as the run lasts; at
  most one batch per TAKEOVER_INTERVAL_S under a real peer's id, and of the messages of a
  later term than their receiver's, one per TERM_BUMP_INTERVAL_S keeps its term.

Then, for every node: its raft process never died or restarted (same PID) and stayed under a
memory bound; it counted what it had to (decode errors, misrouted, refused by the core: at
least what the strangers sent, exactly known); and the cluster kept committing (the client's
proposals went on succeeding, without a long stall), still commits now, and the logs of the
three nodes agree on their committed prefix, where every proposal reported appended at
(index, term) is either that entry or was overwritten as Raft allows.

The smoke run takes well under a minute; ZRAFT_FUZZ_MINUTES=5 runs the long version, which
prints its counts (pytest -s shows them).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.component.test_peer_fuzz_support import (
    DECODE,
    INVALID,
    MAYBE,
    MISROUTED,
    REFUSED,
    UNKNOWN_IDS,
    FuzzPeer,
    Proposer,
    View,
    committed_log,
    expect,
    extra_frame_cases,
    impossible,
    hand_picked,
    messages,
    neutralize,
    proc_mib,
    wire_cases,
    wire_garbage,
)
from tests.component.test_raft_proc_support import Cluster, Node, wait_for
from zraft.raft.types import Message
from zraft.transport.sockets import PEER_MAX_FRAME
from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import Propose, Proposed

LONG_MINUTES = float(os.environ.get("ZRAFT_FUZZ_MINUTES", "0") or 0)
SMOKE_SECONDS = 10.0
MEMORY_BOUND_MIB = 300
"""A raft process here needs about 40 MiB; the largest frame it may read is PEER_MAX_FRAME."""
STALL_LIMIT_S = 15.0
"""The longest the client may go without a proposal that ends up committed. Each message of a
later term that the fuzzer sends (a vote request marked as a transfer, an answer from a later
term) moves every node to that term and costs an election, as it would in any Raft whose
peers are not authenticated; runs of them paused commits for up to 8 s in 5-minute runs."""
FINAL_PROPOSALS = 5
TAKEOVER_INTERVAL_S = 5.0
"""Drawn batches go out under a real peer's routing id at most once per this interval (the
others from strangers): taking a peer's id over (ROUTER_HANDOVER) leaves that peer's link dead
until its heartbeat timeout notices, about 4 s, as any client of the peer port can do while
peers are not authenticated (four takeovers a second stalled commits for 17 s)."""
TERM_BUMP_INTERVAL_S = 2.0
"""Drawn messages of a later term than their receiver's go out at most one per this interval
(the others at the receiver's own term): each moves the cluster to a new term and costs an
election, and a steady stream of them, which anyone may send while peers are not
authenticated, keeps any Raft cluster from electing a leader at all (ten a second held one
leaderless for 20 s). The hand-picked far-future terms are all sent."""


@dataclass
class Tally:
    """What was sent to one node, by expected outcome: `exact` from strangers (all delivered),
    `loose` from DEALERs with a real peer's id (some may be lost when the link is handed back)."""

    exact: Counter[str] = field(default_factory=Counter)
    loose: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


class Fuzzer:
    def __init__(self, cluster: Cluster, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.cluster = cluster
        self.ctx = ctx
        self.ids = tuple(n.id for n in cluster.nodes)
        self.tally = {n.id: Tally() for n in cluster.nodes}
        self.strangers: dict[tuple[int, bytes], FuzzPeer] = {}
        self.recent: list[str] = []  # the latest things sent, for a report if a node dies
        self.batches = 0
        self.miscounted: list[str] = []  # hand-picked cases a node did not count as it should
        self.journal: list[tuple[float, int, str]] = []  # (when, node, what kind) of every input
        self.last_bump = 0.0  # when the latest drawn message of a later term went out
        self.bumps = 0
        self.last_takeover = 0.0  # when a drawn batch last went out under a real peer's id
        self.takeovers = 0

    # -- senders ------------------------------------------------------------------------------
    def stranger(self, node: Node, routing_id: bytes) -> FuzzPeer:
        key = (node.id, routing_id)
        if key not in self.strangers:
            self.strangers[key] = FuzzPeer(self.ctx, node.config.me().raft, routing_id)
        return self.strangers[key]

    def close(self) -> None:
        for peer in self.strangers.values():
            peer.close()

    def view(self, node: Node) -> View | None:
        status = node.status(2.0)
        return None if status is None else View.of_status(status, self.ids)

    def send(self, node: Node, peer: FuzzPeer, frames: list[bytes], what: str, exact: bool) -> str:
        outcome, reason = expect(frames, node.id, peer.routing_id)
        tally = self.tally[node.id]
        (tally.exact if exact else tally.loose)[outcome] += 1
        if outcome != MAYBE:
            tally.reasons[reason] += 1
        self.recent = (self.recent + [f"to node {node.id} on {peer.routing_id!r}: {what}"])[-40:]
        self.journal.append((time.monotonic(), node.id, kind_of(frames, outcome)))
        peer.send(frames)
        return outcome

    def sent_between(self, start: float, end: float) -> dict[str, int]:
        return dict(Counter(kind for at, _, kind in self.journal if start <= at <= end).most_common(12))

    def send_message(self, node: Node, peer: FuzzPeer, msg: Message, view: View, what: str, exact: bool) -> str:
        safe = neutralize(msg, view)
        if safe is None:
            return MAYBE
        return self.send(node, peer, encode(safe), f"{what}: {safe}", exact)

    def counted(self, node: Node, before: dict[str, int], outcome: str, what: str) -> None:
        """Wait (up to 1 s) for `node` to count one input of `outcome`, sent after `before`
        was read from its counters; a stranger's input, sent alone, so exactly that."""
        keys = {DECODE: ("peer_decode_errors",), MISROUTED: ("peer_misrouted",), REFUSED: ("peer_refused",),
                INVALID: ("peer_decode_errors", "peer_refused")}.get(outcome)
        if keys is None:
            return
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            stats = peer_counts(node)
            if sum(stats.get(k, 0) - before.get(k, 0) for k in keys) >= 1:
                return
            time.sleep(0.005)
        self.miscounted.append(f"node {node.id} did not count {what} ({outcome}) in {'/'.join(keys)}")

    # -- liveness -----------------------------------------------------------------------------
    def check_alive(self, pids: dict[int, int]) -> None:
        dead = [n for n in self.cluster.nodes if not n.alive() or n.proc is None or n.proc.pid != pids[n.id]]
        if dead:
            time.sleep(0.5)
            sent = "\n  ".join(self.recent)
            logs = "\n".join(f"--- node {n.id} ---\n{n.log_text()[-3000:]}" for n in dead)
            raise AssertionError(f"raft process of node(s) {[n.id for n in dead]} died; "
                                 f"latest inputs sent:\n  {sent}\n{logs}")

    # -- hand-picked ---------------------------------------------------------------------------
    def hand_picked(self, pids: dict[int, int]) -> None:
        """Every hand-picked case to every node, from stranger 7 and from a real peer. Each
        case a stranger sends that must be counted is waited for in the node's counters (so a
        miss names its case); a real peer's cases go without waiting. A death is caught
        within the next case or two, and `recent` names the inputs that came before it."""
        for node in self.cluster.nodes:
            for frm in (7, next(i for i in self.ids if i != node.id)):
                exact = frm in UNKNOWN_IDS
                peer = self.stranger(node, str(frm).encode()) if exact else \
                    FuzzPeer(self.ctx, node.config.me().raft, str(frm).encode())
                for name, frames in [*wire_cases(node.id, frm), *extra_frame_cases(node.id, frm)]:
                    self.send_counted(node, peer, frames, name, exact)
                    self.check_alive(pids)
                view = self.view(node)
                assert view is not None, f"node {node.id} does not answer"
                for k in range(len(hand_picked(view, frm))):
                    if k % 8 == 0:
                        view = self.view(node) or view  # afresh: earlier cases move its term on
                    name, msg = hand_picked(view, frm)[k]
                    safe = neutralize(msg, view)
                    if safe is not None:
                        self.send_counted(node, peer, encode(safe), f"{name}: {safe}", exact)
                    self.check_alive(pids)
                if not exact:
                    peer.close()

    def send_counted(self, node: Node, peer: FuzzPeer, frames: list[bytes], what: str, exact: bool) -> None:
        outcome, _ = expect(frames, node.id, peer.routing_id)
        if exact and outcome != MAYBE:
            before = peer_counts(node)
            self.send(node, peer, frames, what, exact)
            self.counted(node, before, outcome, what)
        else:
            self.send(node, peer, frames, what, exact)
            time.sleep(0.002)

    def oversized(self, pids: dict[int, int]) -> None:
        """A frame one byte above the inbox's cap (the connection is dropped unread: counted
        nowhere) and one just below it (read, and counted as undecodable), to every node."""
        for node in self.cluster.nodes:
            over = FuzzPeer(self.ctx, node.config.me().raft, b"77")
            over.send([b"\0" * (PEER_MAX_FRAME + 1)])
            under = self.stranger(node, b"78")
            self.send(node, under, [b"\0" * (PEER_MAX_FRAME - 1)], "a frame just below the cap", exact=True)
            time.sleep(0.5)
            over.close(linger_ms=0)
            self.check_alive(pids)

    # -- drawn batches ---------------------------------------------------------------------------
    def batch(self, data: st.DataObject, views: dict[int, View], pids: dict[int, int], live: bool) -> None:
        """One drawn batch: up to 25 messages and garbage frames to one node from one sender
        kind. `views` were taken when this hypothesis run began (strategies must not change
        under hypothesis between examples); an older view is still safe for `neutralize`,
        since terms and commit indexes only grow. Once the run is over (`live` false) it still
        draws, the same way (hypothesis insists), but sends nothing."""
        node = data.draw(st.sampled_from([n for n in self.cluster.nodes if n.id in views]), label="target")
        view = views[node.id]
        wants_real = data.draw(st.integers(0, 3), label="sender") == 0
        items = data.draw(st.lists(st.one_of(messages(view), messages(view), wire_garbage(view.me, view.peers[0])),
                                   min_size=1, max_size=25), label="batch")
        picks = [(item, data.draw(st.sampled_from(UNKNOWN_IDS)), data.draw(st.sampled_from(view.peers)))
                 for item in items]
        if not live:
            return
        real = wants_real and time.monotonic() - self.last_takeover >= TAKEOVER_INTERVAL_S
        if real:
            self.last_takeover = time.monotonic()
            self.takeovers += 1
        routes = []
        for item, stranger_id, peer_id in picks:
            if isinstance(item, Message):
                usable = item.frm in (view.peers if real else UNKNOWN_IDS)
                rid = str(item.frm if usable else (peer_id if real else stranger_id)).encode()
            else:
                rid = str(view.peers[0] if real else stranger_id).encode()
            routes.append((rid, item))
        self.batches += 1
        opened: dict[bytes, FuzzPeer] = {}
        for rid, item in routes:
            if real:
                if rid not in opened:
                    opened[rid] = FuzzPeer(self.ctx, node.config.me().raft, rid)
                peer = opened[rid]
            else:
                peer = self.stranger(node, rid)
            if isinstance(item, Message):
                if item.term > view.term and impossible(item) is None:
                    if time.monotonic() - self.last_bump < TERM_BUMP_INTERVAL_S:
                        item = replace(item, term=view.term)
                    else:
                        self.last_bump = time.monotonic()
                        self.bumps += 1
                self.send_message(node, peer, item, view, "drawn", exact=not real)
            else:
                self.send(node, peer, item, f"drawn frames {item!r:.200}", exact=not real)
        time.sleep(0.02)
        for peer in opened.values():
            peer.close()
        self.check_alive(pids)

    def run_drawn(self, seconds: float, pids: dict[int, int]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            views = {n.id: v for n in self.cluster.nodes if (v := self.view(n)) is not None}
            self.check_alive(pids)
            if not views:
                continue

            @settings(max_examples=20, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(data=st.data())
            def some_batches(data: st.DataObject) -> None:
                self.batch(data, views, pids, live=time.monotonic() < deadline)

            some_batches()


def kind_of(frames: list[bytes], outcome: str) -> str:
    """A short name for what `frames` are: the Raft message type and term shape, or the outcome."""
    if outcome in (DECODE, MISROUTED):
        return outcome
    try:
        msg = decode(frames)
    except RemoteProtocolError:
        return outcome
    assert isinstance(msg, Message)
    return f"{msg.type.name}{' reject' if msg.reject else ''} ({outcome})"


def peer_counts(node: Node) -> dict[str, int]:
    stats = (node.status(2.0) or {}).get("stats", {})
    return {k: v for k, v in stats.items() if k.startswith("peer_")}


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def run(tmp_path, ctx, seconds: float) -> dict[str, object]:
    """Start a cluster, fuzz it (hand-picked, oversized, then drawn for `seconds`) while a
    client proposes, and check everything; the report is printed whether or not it passes."""
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    fuzzer = Fuzzer(cluster, ctx)
    proposer = Proposer({n.id: n.config.raft_rpc for n in cluster.nodes})
    report: dict[str, object] = {}
    try:
        cluster.leader(timeout=15)
        pids = {n.id: n.proc.pid for n in cluster.nodes if n.proc is not None}
        baseline = {n.id: proc_mib(pids[n.id]) for n in cluster.nodes}
        proposer.start()
        started = time.monotonic()
        fuzzer.hand_picked(pids)
        fuzzer.oversized(pids)
        report["hand-picked seconds"] = round(time.monotonic() - started, 1)
        fuzzer.run_drawn(seconds, pids)
        fuzz_end = time.monotonic()
        proposer.stop()
        sent = {n: sum(t.exact.values()) + sum(t.loose.values()) for n, t in fuzzer.tally.items()}
        report.update({"seconds": round(fuzz_end - started, 1), "batches": fuzzer.batches, "inputs sent": sent,
                       "drawn term bumps": fuzzer.bumps, "drawn takeovers": fuzzer.takeovers,
                       "proposals accepted": len(proposer.accepted), "proposals refused": dict(proposer.refused)})
        report["why inputs were bad (top 15)"] = dict(sum((t.reasons for t in fuzzer.tally.values()),
                                                          Counter()).most_common(15))
        fuzzer.check_alive(pids)
        report["peak MiB"] = {n.id: round(proc_mib(pids[n.id])) for n in cluster.nodes}
        report["baseline MiB"] = {k: round(v) for k, v in baseline.items()}
        for node in cluster.nodes:
            peak = proc_mib(pids[node.id])
            assert peak < MEMORY_BOUND_MIB, f"node {node.id} peaked at {peak:.0f} MiB"
        report["terms"] = {n.id: (n.status() or {}).get("term") for n in cluster.nodes}
        report["final commit"] = check_cluster_commits(cluster)
        logs = check_logs_agree(cluster)
        report.update(check_proposals(proposer, logs, started, fuzz_end, fuzzer))
        report["counters"] = check_counters(cluster, fuzzer)
        fuzzer.check_alive(pids)
        assert not fuzzer.miscounted, "hand-picked input not counted as it should be:\n" + \
            "\n".join(fuzzer.miscounted)
        return report
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        print(f"\npeer fuzz report: {report}")
        proposer.stop()
        fuzzer.close()
        cluster.stop()


def check_cluster_commits(cluster: Cluster) -> int:
    """After the fuzz: proposals on the leader commit on every node."""
    deadline = time.monotonic() + 20
    index = 0
    for k in range(FINAL_PROPOSALS):
        while True:
            try:
                leader = cluster.leader(timeout=max(deadline - time.monotonic(), 0.1))
            except AssertionError:
                keys = ("role", "term", "leader", "raft_commit")
                states = {n.id: {key: (n.status() or {}).get(key) for key in keys} for n in cluster.nodes}
                raise AssertionError(f"the cluster no longer elects a leader after the fuzz: {states}") from None
            reply = leader.call(Propose(0, f"final {k}".encode()))
            if isinstance(reply, Proposed):
                index = reply.index
                break
            time.sleep(0.1)
    for node in cluster.nodes:
        def has(n: Node = node) -> bool:
            return bool(n.fetch(index).entries)

        wait_for(f"entry {index} committed on node {node.id}", has, timeout=20)
    return index


def check_logs_agree(cluster: Cluster) -> dict[int, list[tuple[int, int, int, bytes]]]:
    logs = {n.id: committed_log(n.call) for n in cluster.nodes}
    for a in logs:
        for b in logs:
            common = min(len(logs[a]), len(logs[b]))
            for k in range(common):
                assert logs[a][k] == logs[b][k], f"nodes {a} and {b} differ at committed index {k + 1}: " \
                                                 f"{logs[a][k]} vs {logs[b][k]}"
    return logs


def check_proposals(proposer: Proposer, logs: dict[int, list[tuple[int, int, int, bytes]]], started: float,
                    ended: float, fuzzer: Fuzzer) -> dict[str, object]:
    """Every accepted proposal is either committed as proposed or was overwritten (another
    entry of another term at its index), and committed ones kept coming."""
    shortest = min(logs.values(), key=len)
    committed_at: list[float] = []
    overwritten = 0
    for p in proposer.accepted:
        if p.index > len(shortest):
            continue
        _, term, _, data = shortest[p.index - 1]
        if term == p.term:
            assert data == p.data, f"entry {p.index} of term {p.term} holds {data!r}, proposed {p.data!r}"
            committed_at.append(p.at)
        else:
            overwritten += 1
    assert committed_at, "no proposal made during the fuzz was committed"
    times = [started, *sorted(committed_at), ended]
    stall, at = max((b - a, a) for a, b in zip(times, times[1:]))
    refusals = Counter(code for when, code in proposer.errors if at <= when <= at + stall)
    assert stall < STALL_LIMIT_S, (f"no proposal committed for {stall:.1f} s during the fuzz (from "
                                   f"{at - started:.1f} s in); the client heard {dict(refusals)}; sent then: "
                                   f"{fuzzer.sent_between(at, at + stall)}")
    return {"proposals committed": len(committed_at), "proposals overwritten": overwritten,
            "longest stall s": round(stall, 2)}


def check_counters(cluster: Cluster, fuzzer: Fuzzer) -> dict[int, dict[str, int]]:
    """Each node counted at least what the strangers sent it, by kind; and at most what every
    sender sent (real traffic is never counted as bad)."""
    out = {}
    for node in cluster.nodes:
        tally = fuzzer.tally[node.id]
        exact, loose = tally.exact, tally.loose
        need_bad = exact[DECODE] + exact[MISROUTED] + exact[REFUSED] + exact[INVALID]

        def counted(n: Node = node) -> dict[str, int] | None:
            stats = (n.status() or {}).get("stats", {})
            bad = stats.get("peer_decode_errors", 0) + stats.get("peer_misrouted", 0) + stats.get("peer_refused", 0)
            return stats if bad >= need_bad else None

        try:
            stats = wait_for(f"node {node.id} to count the bad input", counted, timeout=10)
        except AssertionError:
            stats = (node.status() or {}).get("stats", {})
        got = {k: v for k, v in stats.items() if k.startswith("peer_")}
        summary = f"node {node.id} counted {got}; strangers sent {dict(exact)}, real-id senders {dict(loose)}"
        assert got.get("peer_decode_errors", 0) >= exact[DECODE], summary
        assert got.get("peer_misrouted", 0) >= exact[MISROUTED], summary
        assert got.get("peer_refused", 0) >= exact[REFUSED], summary
        assert sum(got.get(k, 0) for k in ("peer_decode_errors", "peer_misrouted", "peer_refused")) >= need_bad, \
            f"{summary}: {exact[INVALID]} messages with frames no entry uses were taken without a count"
        most_undecodable = exact[DECODE] + exact[INVALID] + loose[DECODE] + loose[INVALID]
        assert got.get("peer_decode_errors", 0) <= most_undecodable, summary
        assert got.get("peer_misrouted", 0) <= exact[MISROUTED] + loose[MISROUTED], summary
        sent_routed = sum(exact[k] + loose[k] for k in (REFUSED, INVALID, MAYBE))
        assert got.get("peer_refused", 0) <= sent_routed, summary
        out[node.id] = got
        out[node.id]["sent"] = sum(exact.values()) + sum(loose.values())
    return out


@pytest.mark.timeout(180)
def test_peer_fuzz_smoke(tmp_path, ctx):
    run(tmp_path, ctx, SMOKE_SECONDS)


@pytest.mark.slow
@pytest.mark.skipif(not LONG_MINUTES, reason="set ZRAFT_FUZZ_MINUTES to run the long peer fuzz")
@pytest.mark.timeout(int(LONG_MINUTES * 60) + 300)
def test_peer_fuzz_long(tmp_path, ctx):
    run(tmp_path, ctx, LONG_MINUTES * 60)
