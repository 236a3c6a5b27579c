"""Small deterministic harness for driving RaftCore in unit tests.

Two layers:
- single-core helpers (`new_core`, `drain`, `make_leader`, message builders) for tests in the
  style of etcd's raft_paper_test.go, which feed one node hand-made messages and inspect what
  it emits;
- `Network`: several cores with in-memory storage and a deliver-all loop, plus ways to cut
  links, isolate nodes, drop message types and restart a node from what it persisted.

Everything is seeded, so every run of a test sees the same sequence of events.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from zraft.raft import (
    NONE,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Message,
    MsgType,
    RaftConfig,
    RaftCore,
    Ready,
    ReadState,
    Role,
    SnapshotMeta,
)

# ---------------------------------------------------------------------------------------------
# single-core helpers
# ---------------------------------------------------------------------------------------------


def new_core(
    node_id: int = 1,
    voters: Iterable[int] = (1, 2, 3),
    learners: Iterable[int] = (),
    *,
    seed: int = 0,
    entries: Iterable[Entry] = (),
    hard_state: HardState | None = None,
    snapshot: SnapshotMeta | None = None,
    applied: int = 0,
    election_tick: int = 10,
    heartbeat_tick: int = 1,
    **cfg: object,
) -> RaftCore:
    """A core bootstrapped with the given configuration (and optionally a recovered log)."""
    conf = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
    snap = snapshot if snapshot is not None else SnapshotMeta(conf=conf)
    initial = InitialState(
        hard_state=hard_state if hard_state is not None else HardState(),
        snapshot=snap,
        entries=tuple(entries),
        applied=applied,
    )
    config = RaftConfig(node_id=node_id, election_tick=election_tick, heartbeat_tick=heartbeat_tick, **cfg)
    return RaftCore(config, random.Random(seed * 7919 + node_id), initial)


def ents(*terms: int, start: int = 1) -> tuple[Entry, ...]:
    """Entries with the given terms at consecutive indexes from `start`."""
    return tuple(Entry(term=t, index=start + k, data=f"e{start + k}t{t}".encode()) for k, t in enumerate(terms))


def drain(core: RaftCore) -> Ready:
    """Take one Ready (or an empty one) and advance it, as a shell that does everything."""
    if not core.has_ready():
        return Ready()
    rd = core.ready()
    core.advance(rd)
    return rd


def all_msgs(rd: Ready) -> list[Message]:
    return list(rd.messages) + list(rd.messages_after_persist)


def take_msgs(core: RaftCore) -> list[Message]:
    """Drain one Ready and return every message it carried."""
    return all_msgs(drain(core))


def of_type(msgs: Iterable[Message], *types: MsgType) -> list[Message]:
    return [m for m in msgs if m.type in types]


def make_leader(core: RaftCore) -> Ready:
    """Elect `core` by feeding it grants from every other voter; returns the Ready drained
    right after it became leader (holding its no-op entry and first AppendEntries)."""
    core.campaign()
    drain(core)
    voters = [v for v in core.conf.voters if v != core.id]
    for _ in range(3):
        if core.role == Role.LEADER:
            break
        for v in voters:
            if core.role == Role.PRE_CANDIDATE:
                core.step(Message(MsgType.PRE_VOTE_RESP, to=core.id, frm=v, term=core.term + 1))
            elif core.role == Role.CANDIDATE:
                core.step(Message(MsgType.VOTE_RESP, to=core.id, frm=v, term=core.term))
            else:
                break
        if core.role != Role.LEADER:
            drain(core)
    assert core.role == Role.LEADER, f"node {core.id} failed to become leader: {core.role!r}"
    return drain(core)


def app(frm: int, to: int, term: int, index: int, log_term: int, entries: Iterable[Entry] = (),
        commit: int = 0) -> Message:
    return Message(MsgType.APP, to=to, frm=frm, term=term, index=index, log_term=log_term,
                   entries=tuple(entries), commit=commit)


def app_resp(frm: int, to: int, term: int, index: int, reject: bool = False, reject_hint: int = 0,
             log_term: int = 0) -> Message:
    return Message(MsgType.APP_RESP, to=to, frm=frm, term=term, index=index, reject=reject,
                   reject_hint=reject_hint, log_term=log_term)


def vote(frm: int, to: int, term: int, index: int = 0, log_term: int = 0, pre: bool = False,
         context: int = 0) -> Message:
    return Message(MsgType.PRE_VOTE if pre else MsgType.VOTE, to=to, frm=frm, term=term,
                   index=index, log_term=log_term, context=context)


def log_entries(core: RaftCore) -> list[tuple[int, int]]:
    """(index, term) of every entry the core still holds in memory."""
    return [(e.index, e.term) for e in core.log.entries]


# ---------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------


@dataclass
class Storage:
    """What one node persisted, as a shell following the Ready contract would."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compact(self, meta: SnapshotMeta) -> None:
        self.snapshot = meta
        self.entries = [e for e in self.entries if e.index > meta.index]

    def initial_state(self) -> InitialState:
        return InitialState(hard_state=self.hard_state, snapshot=self.snapshot,
                            entries=tuple(self.entries), applied=0)


class Network:
    """A set of cores wired together by a perfect (unless told otherwise) message queue."""

    def __init__(
        self,
        voters: Iterable[int] = (1, 2, 3),
        learners: Iterable[int] = (),
        *,
        seed: int = 0,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        **cfg: object,
    ) -> None:
        self.seed = seed
        self.cfg: dict[str, object] = dict(election_tick=election_tick, heartbeat_tick=heartbeat_tick, **cfg)
        self.nodes: dict[int, RaftCore] = {}
        self.storage: dict[int, Storage] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.readies: dict[int, list[Ready]] = {}
        self.sent: list[Message] = []          # every message a node emitted
        self.delivered: list[Message] = []     # every message that reached its target
        self.isolated: set[int] = set()
        self.cut: set[tuple[int, int]] = set()  # directed links that drop everything
        self.drop: Callable[[Message], bool] | None = None
        self.queue: deque[Message] = deque()
        conf = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
        for node in conf.members():
            self.add_node(node, conf)

    # -- membership of the simulated world ------------------------------------------------
    def add_node(self, node: int, conf: ConfState = ConfState(), **cfg: object) -> RaftCore:
        """Start a node with an empty log; an empty `conf` makes it a node that waits to join."""
        storage = Storage(snapshot=SnapshotMeta(conf=conf))
        self.storage[node] = storage
        self.applied[node] = []
        self.read_states[node] = []
        self.readies[node] = []
        self.nodes[node] = self._build(node, storage.initial_state(), **cfg)
        return self.nodes[node]

    def _build(self, node: int, initial: InitialState, **cfg: object) -> RaftCore:
        merged = dict(self.cfg)
        merged.update(cfg)
        config = RaftConfig(node_id=node, **merged)  # type: ignore[arg-type]
        return RaftCore(config, random.Random(self.seed * 7919 + node), initial)

    def set_log(self, node: int, entries: Iterable[Entry], term: int, vote: int = NONE,
                commit: int = 0) -> RaftCore:
        """Replace `node` by one that recovered the given log and hard state from storage."""
        storage = self.storage[node]
        storage.entries = list(entries)
        storage.hard_state = HardState(term=term, vote=vote, commit=commit)
        return self.restart(node)

    def restart(self, node: int) -> RaftCore:
        """Crash `node` (losing everything not persisted) and start it from its storage."""
        self.queue = deque(m for m in self.queue if m.to != node and m.frm != node)
        self.applied[node] = []
        self.nodes[node] = self._build(node, self.storage[node].initial_state())
        return self.nodes[node]

    # -- faults ---------------------------------------------------------------------------
    def isolate(self, node: int) -> None:
        self.isolated.add(node)

    def cut_link(self, a: int, b: int) -> None:
        self.cut.add((a, b))
        self.cut.add((b, a))

    def heal(self) -> None:
        self.isolated.clear()
        self.cut.clear()
        self.drop = None

    def allowed(self, msg: Message) -> bool:
        if msg.to not in self.nodes:
            return False
        if msg.frm in self.isolated or msg.to in self.isolated:
            return False
        if (msg.frm, msg.to) in self.cut:
            return False
        return not (self.drop is not None and self.drop(msg))

    # -- driving --------------------------------------------------------------------------
    def process(self, node: int) -> Ready | None:
        """Run one Ready cycle of `node`, following the order the Ready contract prescribes."""
        core = self.nodes[node]
        if not core.has_ready():
            return None
        rd = core.ready()
        self.readies[node].append(rd)
        self._send(rd.messages)
        self.storage[node].persist(rd)
        self._send(rd.messages_after_persist)
        self.applied[node].extend(rd.committed_entries)
        self.read_states[node].extend(rd.read_states)
        core.advance(rd)
        return rd

    def _send(self, msgs: Iterable[Message]) -> None:
        for msg in msgs:
            self.sent.append(msg)
            self.queue.append(msg)

    def process_all(self) -> None:
        for node in sorted(self.nodes):
            while self.process(node) is not None:
                pass

    def deliver_all(self, max_rounds: int = 10_000) -> None:
        """Process every node and deliver every message until nothing moves."""
        for _ in range(max_rounds):
            self.process_all()
            if not self.queue:
                return
            batch, self.queue = self.queue, deque()
            for msg in batch:
                if self.allowed(msg):
                    self.delivered.append(msg)
                    self.nodes[msg.to].step(msg)
        raise AssertionError("network did not quiesce")

    def tick(self, nodes: Iterable[int] | None = None, times: int = 1, deliver: bool = True) -> None:
        """Tick the given nodes (default: all) `times` times, delivering after each tick."""
        targets = sorted(self.nodes) if nodes is None else list(nodes)
        for _ in range(times):
            for node in targets:
                self.nodes[node].tick()
            if deliver:
                self.deliver_all()

    def elect(self, node: int) -> RaftCore:
        """Make `node` leader by calling campaign() on it and delivering everything."""
        self.nodes[node].campaign()
        self.deliver_all()
        core = self.nodes[node]
        assert core.role == Role.LEADER, f"node {node} did not win: {core.role!r}"
        return core

    def propose(self, node: int, data: bytes) -> int:
        index = self.nodes[node].propose(data)
        self.deliver_all()
        return index

    # -- observation ----------------------------------------------------------------------
    def leaders(self) -> list[int]:
        return [n for n, c in sorted(self.nodes.items()) if c.role == Role.LEADER]

    def applied_data(self, node: int) -> list[bytes]:
        """Data of the application entries `node` applied (no-ops and CONF entries left out)."""
        return [e.data for e in self.applied[node] if e.data and e.kind == EntryKind.NORMAL]

    def sent_of(self, *types: MsgType, frm: int | None = None, to: int | None = None) -> list[Message]:
        return [m for m in self.sent if m.type in types
                and (frm is None or m.frm == frm) and (to is None or m.to == to)]


__all__ = [
    "NONE", "Network", "Storage", "all_msgs", "app", "app_resp", "drain", "ents", "log_entries",
    "make_leader", "new_core", "of_type", "take_msgs", "vote",
]
