"""A deterministic, seeded simulation of a Raft cluster running the real RaftCore.

Everything nondeterministic lives here and is drawn from one `random.Random(seed)`: message
delays, drops, duplicates, partitions, crashes, clock drift, proposals, reads, membership
changes, transfers (to a random voter, or to the one the core picks) and compactions. Virtual
time is an integer; events sit in a heap ordered by (time, sequence number), so the same seed
replays the same run, event for event.

Each simulated node follows the shell contract of zraft.raft.types.Ready in two separate
events, so that a crash can fall between them: `process` takes a Ready and sends the messages
that may leave before the write; `persist` later makes the write durable, sends the rest,
applies, and advances. A crash discards everything not yet persisted.

Two faults go beyond a crash. *Damage* (a flipped bit in a node's synced log, detected at
restart): the node restarts with its log cut at a random point and, as the raft process's
salvage does, a vote floor at the last log id it had. `vote_floor=False` restarts it without
the floor: the planted-bug control showing that the floor is what keeps this safe. A *wipe*
(an operator emptied the node's data folder): the node restarts with nothing at all but its
configuration, and must learn a floor and a term from the other voters before it votes
(RaftConfig.recover_blank); `recover_blank=False` is the planted-bug control.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from zraft.raft import (
    NONE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    EntryKind,
    HardState,
    InitialState,
    LogInvariantError,
    Message,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
    SnapshotMeta,
)
from zraft.sim.checker import Checker, Durable

TICK = 10  # virtual time units per tick at nominal clock speed
ELECTION_TICK = 10
_MASK = (1 << 64) - 1

# event kinds
_TICK, _DELIVER, _PROCESS, _PERSIST, _RESTART, _NEMESIS, _CLIENT, _DAMAGE, _WIPE = range(9)

CoreFactory = Callable[[RaftConfig, random.Random, InitialState], RaftCore]


@dataclass
class FaultProfile:
    """How hostile one run is; drawn from the seed so campaigns cover a spread."""

    drop: float
    duplicate: float
    max_delay: int
    nemesis_every: int
    crash_weight: int
    partition_weight: int
    max_msg_bytes: int
    max_persist_delay: int


@dataclass
class SimNode:
    node_id: int
    core: RaftCore | None
    durable: Durable = field(default_factory=Durable)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    applied: int = 0
    in_flight: Ready | None = None
    process_scheduled: bool = False
    tick_period: int = TICK
    incarnation: int = 0
    leader_term_seen: int = -1

    @property
    def alive(self) -> bool:
        return self.core is not None


class Simulation:
    def __init__(self, seed: int, nodes: int = 3, core_factory: CoreFactory = RaftCore,
                 profile: FaultProfile | None = None, vote_floor: bool = True, damage: bool = True,
                 wipe: bool = True, recover_blank: bool = True) -> None:
        self.seed = seed
        self.vote_floor = vote_floor
        self.recover_blank = recover_blank
        self.wipe_count = 0
        self.wiped: set[int] = set()  # wiped nodes not yet through their blank-start recovery
        # Wipes too draw from a stream of their own and strike in half of the seeds.
        self._wipe_rng = random.Random(seed * 9_000_011 + 41)
        self.wipe_on = wipe and self._wipe_rng.random() < 0.5
        self.damaged: dict[int, tuple[int, int]] = {}  # node -> last log id it had when damaged
        self.damage_count = 0
        # Damage draws from a stream of its own, on a schedule of its own, and strikes in half
        # of the seeds: the other half, and every seed until its first damage, run exactly as
        # before the fault existed. `damage=False` turns it off altogether, for the planted-bug
        # tests of other rules, whose seed budgets were calibrated without it.
        self._damage_rng = random.Random(seed * 1_000_003 + 17)
        # The hand-off choice too, so that seeds replay as they did before it existed until
        # the first hand-off (the seeds quoted in issues stay meaningful).
        self._transfer_rng = random.Random(seed * 7_000_003 + 29)
        self.damage_on = damage and self._damage_rng.random() < 0.5
        self.rng = random.Random(seed)
        self.core_factory = core_factory
        self.checker = Checker()
        self.time = 0
        self.events = 0
        self.trace = 0
        self._queue: list[tuple[int, int, int, object]] = []
        self._seq = 0
        self.voters = tuple(range(1, nodes + 1))
        self.all_ids = tuple(range(1, nodes + 3))  # two spares that may join as learners
        self.blocked: set[tuple[int, int]] = set()
        self.faults_on = True
        self.profile = profile or self._draw_profile()
        self._proposal_seq = 0
        self._read_seq = 0
        self._reads: dict[int, int] = {}
        self.reads_completed = 0
        self.hand_offs = 0  # leadership transfers whose target the core chose
        self.committed_markers: set[bytes] = set()
        self.nodes: dict[int, SimNode] = {}
        for node_id in self.all_ids:
            bootstrap = ConfState(voters=self.voters) if node_id in self.voters else ConfState()
            node = SimNode(node_id, None, snapshot=SnapshotMeta(conf=bootstrap))
            self.nodes[node_id] = node
            self._start(node)
            self._schedule(self.rng.randrange(1, TICK), _TICK, (node_id, node.incarnation))
        self._schedule(1, _NEMESIS, None)
        self._schedule(1, _CLIENT, None)
        if self.damage_on:
            self._schedule(self._damage_rng.randrange(50, 1000), _DAMAGE, None)
        if self.wipe_on:
            self._schedule(self._wipe_rng.randrange(50, 1500), _WIPE, None)

    # == scheduling ==========================================================================
    def _schedule(self, delay: int, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.time + delay, self._seq, kind, payload))

    def _mix(self, *values: int) -> None:
        h = self.trace
        for v in values:
            h = ((h ^ (v & _MASK)) * 0x100000001B3) & _MASK
        self.trace = h

    def run(self, steps: int) -> None:
        """Process `steps` events, or fewer: a run stops at its first safety violation, since
        what follows explores a broken state (a planted bug can go on to trip the log's own
        assertions, which would end the whole campaign instead of reporting the seed)."""
        handlers = self._handlers
        violations = self.checker.violations
        for _ in range(steps):
            if not self._queue or violations:
                return
            time, _, kind, payload = heapq.heappop(self._queue)
            self.time = time
            self.checker.time = time
            self.events += 1
            self._mix(kind, time)
            handlers[kind](self, payload)

    # == node lifecycle ======================================================================
    def _start(self, node: SimNode) -> None:
        durable = node.durable
        initial = InitialState(hard_state=durable.hard_state, snapshot=node.snapshot,
                               entries=tuple(durable.entries), applied=node.applied)
        config = RaftConfig(node_id=node.node_id, election_tick=ELECTION_TICK, heartbeat_tick=1,
                            max_inflight=8, max_msg_bytes=self.profile.max_msg_bytes,
                            max_inflight_bytes=4 * self.profile.max_msg_bytes, recover_blank=self.recover_blank)
        node.core = self.core_factory(config, random.Random(self.rng.randrange(1 << 30)), initial)
        node.incarnation += 1
        node.in_flight = None
        node.process_scheduled = False
        node.leader_term_seen = -1

    def crash(self, node: SimNode) -> None:
        """kill -9: lose memory and every write not yet durable."""
        if node.core is None:
            return
        self._mix(1000 + node.node_id)
        node.core = None
        node.in_flight = None

    def _after_input(self, node: SimNode, old_commit: int) -> None:
        core = node.core
        assert core is not None
        if core.log.committed != old_commit:
            self.checker.on_commit(core, old_commit)
        if core.role == Role.LEADER and node.leader_term_seen != core.term:
            node.leader_term_seen = core.term
            self.checker.on_leader(core)
        if not node.process_scheduled and node.in_flight is None:
            node.process_scheduled = True
            self._schedule(0, _PROCESS, (node.node_id, node.incarnation))

    def _guard(self, node: SimNode, action: Callable[[], None]) -> None:
        core = node.core
        assert core is not None
        old_commit = core.log.committed
        try:
            action()
        except LogInvariantError as exc:
            self.checker.fail(node.node_id, "core-invariant", str(exc))
            self.crash(node)
            return
        self._after_input(node, old_commit)

    # == event handlers ======================================================================
    def _on_tick(self, payload: object) -> None:
        node_id, incarnation = _node_event(payload)
        node = self.nodes[node_id]
        if node.incarnation != incarnation or node.core is None:
            return
        core = node.core
        self._guard(node, core.tick)
        self._schedule(node.tick_period, _TICK, payload)

    def _on_deliver(self, payload: object) -> None:
        msg = payload
        assert isinstance(msg, Message)
        node = self.nodes[msg.to]
        if node.core is None or (msg.frm, msg.to) in self.blocked:
            return
        self._mix(msg.type, msg.frm, msg.to, msg.term, msg.index, len(msg.entries))
        core = node.core
        self._guard(node, lambda: core.step(msg))

    def _on_process(self, payload: object) -> None:
        node_id, incarnation = _node_event(payload)
        node = self.nodes[node_id]
        node.process_scheduled = False
        core = node.core
        if node.incarnation != incarnation or core is None or node.in_flight is not None:
            return
        if not core.has_ready():
            return
        rd = core.ready()
        if rd.entries:
            self.checker.on_entries(core, rd.entries)
        for msg in rd.messages:
            self._send(node, msg)
        node.in_flight = rd
        delay = self.rng.randrange(self.profile.max_persist_delay) if self.faults_on else 0
        self._schedule(delay, _PERSIST, (node_id, incarnation))

    def _on_persist(self, payload: object) -> None:
        node_id, incarnation = _node_event(payload)
        node = self.nodes[node_id]
        rd = node.in_flight
        core = node.core
        if node.incarnation != incarnation or core is None or rd is None:
            return
        self._persist(node, rd)
        for msg in rd.messages_after_persist:
            self._send(node, msg)
        self._apply(node, rd)
        node.in_flight = None
        for read in rd.read_states:
            self._complete_read(node, read.request_id, read.index)
        self._guard(node, lambda: core.advance(rd))

    def _persist(self, node: SimNode, rd: Ready) -> None:
        durable = node.durable
        if rd.snapshot is not None:
            node.snapshot = rd.snapshot
            durable.entries = []
            durable.snapshot_index = rd.snapshot.index
        if rd.entries:
            first = rd.entries[0].index
            keep = first - durable.snapshot_index - 1
            del durable.entries[max(keep, 0):]
            durable.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.checker.on_persist_hard_state(node.node_id, durable.hard_state, rd.hard_state)
            durable.hard_state = rd.hard_state

    def _apply(self, node: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.checker.on_snapshot_install(node.node_id, rd.snapshot.index, rd.snapshot.term)
            node.applied = rd.snapshot.index
        for entry in rd.committed_entries:
            self.checker.on_apply(node.node_id, entry)
            node.applied = entry.index
            if entry.data.startswith(b"live"):
                self.committed_markers.add(entry.data)

    def _send(self, node: SimNode, msg: Message) -> None:
        self.checker.on_send(msg, node.durable)
        if (msg.frm, msg.to) in self.blocked or msg.to not in self.nodes:
            return
        rng = self.rng
        profile = self.profile
        if self.faults_on and rng.random() < profile.drop:
            return
        copies = 2 if self.faults_on and rng.random() < profile.duplicate else 1
        for _ in range(copies):
            delay = 1 + rng.randrange(profile.max_delay if self.faults_on else 3)
            self._schedule(delay, _DELIVER, msg)

    def _on_restart(self, payload: object) -> None:
        node = self.nodes[payload]  # type: ignore[index]
        if node.core is not None:
            return
        self._start(node)
        self._schedule(self.rng.randrange(1, TICK), _TICK, (node.node_id, node.incarnation))

    # == clients =============================================================================
    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for node in self.nodes.values():
            core = node.core
            if core is not None and core.role == Role.LEADER:
                if best is None or (best.core is not None and core.term > best.core.term):
                    best = node
        return best

    def propose(self, data: bytes) -> bool:
        leader = self.leader()
        if leader is None or leader.core is None:
            return False
        core = leader.core
        accepted = True

        def do() -> None:
            nonlocal accepted
            try:
                core.propose(data)
            except ProposalDropped:
                accepted = False
        self._guard(leader, do)
        return accepted

    def _on_client(self, payload: object) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.7:
            self._proposal_seq += 1
            self.propose(b"v%d" % self._proposal_seq)
        else:
            self._start_read(self.nodes[rng.choice(self.all_ids)])
        self._schedule(rng.randrange(1, 3 * TICK), _CLIENT, None)

    def _start_read(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        self._read_seq += 1
        request_id = self._read_seq
        self._reads[request_id] = self.checker.max_committed
        self._guard(node, lambda: None if core.read_index(request_id) else None)

    def _complete_read(self, node: SimNode, request_id: int, index: int) -> None:
        commit_at_request = self._reads.pop(request_id, None)
        if commit_at_request is not None:
            self.reads_completed += 1
            self.checker.on_read(node.node_id, index, commit_at_request)

    # == nemesis =============================================================================
    def _draw_profile(self) -> FaultProfile:
        rng = self.rng
        return FaultProfile(drop=rng.choice((0.0, 0.02, 0.1, 0.25)),
                            duplicate=rng.choice((0.0, 0.02, 0.1)),
                            max_delay=rng.choice((5, 15, 40)),
                            nemesis_every=rng.choice((2, 5, 15)) * TICK,
                            crash_weight=rng.choice((1, 3, 6)),
                            partition_weight=rng.choice((1, 3, 6)),
                            max_msg_bytes=rng.choice((30, 256, 4096)),
                            max_persist_delay=rng.choice((1, 4, 4, 40)))

    def _on_nemesis(self, payload: object) -> None:
        if not self.faults_on:
            return
        rng = self.rng
        actions: list[tuple[int, Callable[[], None]]] = [
            (self.profile.crash_weight, self._nemesis_crash),
            (self.profile.partition_weight, self._nemesis_partition),
            (3, self._nemesis_heal),
            (2, self._nemesis_membership),
            (1, self._nemesis_transfer),
            (2, self._nemesis_compact),
            (1, self._nemesis_drift),
        ]
        total = sum(w for w, _ in actions)
        pick = rng.randrange(total)
        for weight, action in actions:
            if pick < weight:
                action()
                break
            pick -= weight
        self._schedule(1 + rng.randrange(2 * self.profile.nemesis_every), _NEMESIS, None)

    def _nemesis_crash(self) -> None:
        rng = self.rng
        leader = self.leader()
        if leader is not None and rng.random() < 0.5:
            victims = [leader.node_id]
        else:
            victims = [rng.choice(self.all_ids)]
        if rng.random() < 0.05:
            victims = list(self.all_ids)  # whole-cluster power loss
        for node_id in victims:
            self.crash(self.nodes[node_id])
            self._schedule(rng.randrange(1, 3 * ELECTION_TICK * TICK), _RESTART, node_id)

    def _on_damage(self, payload: object) -> None:
        if not self.faults_on:
            return
        self._nemesis_damage()
        self._schedule(self._damage_rng.randrange(100, 800), _DAMAGE, None)

    def _nemesis_damage(self) -> None:
        """A node's synced log is damaged: crash it and restart it with its log cut at a random
        index p (the salvaged prefix), term and vote kept, commit at most p, applied state
        rolled back to p (a conservative model: re-applying must give the same entries), and
        a vote floor at the last log id it had.

        Only where the other nodes can elect a leader without this one, because refusing to
        elect anyone is then the correct outcome, which the liveness check would report as a
        failure: at most one node recovers from damage at a time (two damaged nodes of three
        may have lost a committed entry between them), and only in configurations of three
        voters or more, which do not shrink while it recovers (in a two-voter configuration a
        damaged leader's newest entries may exist nowhere else, and its floor then blocks every
        election until an operator steps in: see raft/DESIGN.md)."""
        rng = self._damage_rng
        node = self.nodes[rng.choice(self.all_ids)]
        if self._min_voters() < 3 or any(self._recovering(other) for other in self.nodes.values()
                                         if other is not node):
            return
        if not self._others_can_elect(node):
            return
        self.crash(node)
        durable = node.durable
        last_id = self._durable_last_id(node)
        lo = durable.snapshot_index
        if rng.random() < 0.5:
            cut = lo + rng.randrange(durable.last_index() - lo + 1)
        else:  # the newest entries: where acknowledged, barely committed entries live
            cut = max(lo, durable.last_index() - rng.randrange(4))
        durable.entries = durable.entries[:cut - lo]
        hs = durable.hard_state
        floor = max(hs.vote_floor(), last_id) if self.vote_floor else hs.vote_floor()
        durable.hard_state = HardState(hs.term, hs.vote, min(hs.commit, cut), *floor)
        node.applied = min(node.applied, cut)
        self.damaged[node.node_id] = max(self.damaged.get(node.node_id, (0, 0)), last_id)
        self.damage_count += 1
        self._mix(2000 + node.node_id, cut)
        self._schedule(rng.randrange(1, 3 * ELECTION_TICK * TICK), _RESTART, node.node_id)

    def _on_wipe(self, payload: object) -> None:
        if not self.faults_on:
            return
        self._nemesis_wipe()
        self._schedule(self._wipe_rng.randrange(200, 1500), _WIPE, None)

    def _nemesis_wipe(self) -> None:
        """A node's data folder is emptied: it restarts with its bootstrap configuration and
        nothing else (no term, no vote, no log, no floor), as a fresh node would.

        Under the same conditions as damage (at most one node recovering at a time, the others
        able to elect without it), and only while every node holds the bootstrap voters: the
        wiped node asks the voters its configuration file names, which must be the real ones
        (zraft's processes have a fixed membership; a node whose configuration changed must
        be re-added, not wiped)."""
        rng = self._wipe_rng
        node = self.nodes[rng.choice(self.voters)]
        if self._min_voters() < 3 or any(self._recovering(other) for other in self.nodes.values()):
            return
        if not self._others_can_elect(node) or not self._static_membership():
            return
        last_id = self._durable_last_id(node)
        self.crash(node)
        node.durable = Durable()
        node.snapshot = SnapshotMeta(conf=ConfState(voters=self.voters))
        node.applied = 0
        if last_id > (0, 0):
            self.damaged[node.node_id] = last_id
        self.wiped.add(node.node_id)
        self.wipe_count += 1
        self._mix(4000 + node.node_id)
        self._schedule(rng.randrange(1, 3 * ELECTION_TICK * TICK), _RESTART, node.node_id)

    def _blank(self, node: SimNode) -> bool:
        """Whether `node` is (or would restart) in blank-start recovery."""
        if not self.recover_blank:
            return False
        if node.core is not None and node.core.recovering:
            return True
        durable = node.durable
        return durable.hard_state == HardState() and not durable.entries and node.snapshot.index == 0

    def _static_membership(self) -> bool:
        """Whether every node, in memory and on disk, has the bootstrap voters."""
        for node in self.nodes.values():
            confs = [self._durable_conf(node)] + ([node.core.conf] if node.core is not None else [])
            if any(conf.voters and conf.voters != self.voters for conf in confs):
                return False
        return True

    @staticmethod
    def _durable_last_id(node: SimNode) -> tuple[int, int]:
        durable = node.durable
        return (durable.entries[-1].term if durable.entries else node.snapshot.term, durable.last_index())

    @staticmethod
    def _durable_conf(node: SimNode) -> ConfState:
        confs = [e for e in node.durable.entries if e.kind == EntryKind.CONF]
        return ConfState.decode(confs[-1].data) if confs else node.snapshot.conf

    def _min_voters(self) -> int:
        """The fewest voters of any configuration a node holds, in memory or on disk."""
        counts = []
        for node in self.nodes.values():
            if node.core is not None and node.core.conf.voters:
                counts.append(len(node.core.conf.voters))
            conf = self._durable_conf(node)
            if conf.voters:
                counts.append(len(conf.voters))
        return min(counts, default=0)

    def _others_can_elect(self, victim: SimNode) -> bool:
        """Whether some node other than `victim` could win an election without its vote, judged
        on what every node has on disk: a voter of its own latest configuration, not below its
        own floor, whose log is at least as up-to-date as the log and floor of a majority of
        that configuration's voters, `victim` left out.

        Checking only that three voters or more remain is not enough: the others may hold
        configurations and logs that need the victim (seed 9002821, 3 nodes: the one node
        holding the newest entry was a learner, whose vote the only possible candidate's
        configuration of four voters needed; the damaged node was the only one that could
        have led). Refusing every election is then the correct outcome of the floor, which
        the liveness check would report as a failure (raft/DESIGN.md, "Liveness")."""
        def up_to_date_mark(node: SimNode) -> tuple[int, int]:
            if self._blank(node):  # votes for nobody until it has heard from every voter
                return (1 << 62, 1 << 62)
            return max(self._durable_last_id(node), node.durable.hard_state.vote_floor())

        for candidate in self.nodes.values():
            conf = self._durable_conf(candidate)
            last = self._durable_last_id(candidate)
            if candidate is victim or candidate.node_id not in conf.voters or self._blank(candidate):
                continue
            if last < candidate.durable.hard_state.vote_floor():
                continue
            granted = sum(1 for voter in conf.voters if voter != victim.node_id
                          and up_to_date_mark(self.nodes[voter]) <= last)
            if granted > len(conf.voters) // 2:
                return True
        return False

    def _recovering(self, node: SimNode) -> bool:
        """Whether `node` was wiped and has not finished its blank-start recovery, or was
        damaged or wiped and its durable log has not yet caught up to what it had, or holds a
        vote floor its log has not reached (a blank start's floor, learned from the others,
        can stand for entries of a voter that is then removed: seed 13007574, 3 nodes)."""
        if node.node_id in self.wiped:
            if node.core is None or node.core.recovering:
                return True
            self.wiped.discard(node.node_id)
        core = node.core
        if core is not None and (core.recovering or core.below_vote_floor()):
            return True
        if core is None and self._durable_last_id(node) < node.durable.hard_state.vote_floor():
            return True
        lost = self.damaged.get(node.node_id)
        if lost is None:
            return False
        if self._durable_last_id(node) >= lost:
            del self.damaged[node.node_id]
            return False
        return True

    def _nemesis_partition(self) -> None:
        rng = self.rng
        ids = list(self.all_ids)
        rng.shuffle(ids)
        kind = rng.randrange(3)
        self.blocked = set()
        if kind == 0:  # random halves
            cut = rng.randrange(1, len(ids))
            left, right = ids[:cut], ids[cut:]
            self.blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
        elif kind == 1:  # isolate the leader
            leader = self.leader()
            target = leader.node_id if leader else ids[0]
            self.blocked = {(target, o) for o in ids if o != target} | {(o, target) for o in ids if o != target}
        else:  # asymmetric: one node hears nobody but can still talk
            target = ids[0]
            self.blocked = {(o, target) for o in ids if o != target}

    def _nemesis_heal(self) -> None:
        self.blocked = set()

    def _nemesis_membership(self) -> None:
        leader = self.leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        conf = core.conf
        rng = self.rng
        outsiders = [n for n in self.all_ids if n not in conf.members()]
        choices: list[ConfChange] = []
        if outsiders:
            choices.append(ConfChange(ConfChangeKind.ADD_LEARNER, rng.choice(outsiders)))
        if conf.learners:
            choices.append(ConfChange(ConfChangeKind.ADD_VOTER, rng.choice(conf.learners)))
        recovering = any(self._recovering(n) for n in self.nodes.values())
        if recovering and self.wipe_count:  # a wiped node asks the voters of its configuration file
            choices = [c for c in choices if c.kind != ConfChangeKind.ADD_VOTER]
        elif len(conf.voters) > len(self.voters) - 1 and not (recovering and len(conf.voters) <= 3):
            choices.append(ConfChange(ConfChangeKind.REMOVE, rng.choice(conf.voters)))
        if conf.learners:
            choices.append(ConfChange(ConfChangeKind.REMOVE, rng.choice(conf.learners)))
        if not choices:
            return
        change = rng.choice(choices)

        def do() -> None:
            try:
                core.propose_conf_change(change)
            except ProposalDropped:
                pass
        self._guard(leader, do)

    def _nemesis_transfer(self) -> None:
        """Move leadership: half the time to a random voter (the leader itself and
        non-candidates included, which the core ignores), half the time by the core's own
        choice, as the raft process does when its disk is full (`hand_off_leadership`)."""
        leader = self.leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        if self._transfer_rng.random() < 0.5:
            def hand_off() -> None:
                target = core.hand_off_leadership()
                if target != NONE:
                    self.hand_offs += 1
                    self._mix(3000 + target)
            self._guard(leader, hand_off)
            return
        target = self.rng.choice(core.conf.voters)
        self._guard(leader, lambda: core.transfer_leader(target))

    def _nemesis_compact(self) -> None:
        node = self.nodes[self.rng.choice(self.all_ids)]
        core = node.core
        if core is None or node.in_flight is not None or core.log.applied <= core.log.snapshot.index:
            return
        meta = core.compact(core.log.applied)
        node.snapshot = meta
        node.durable.entries = [e for e in node.durable.entries if e.index > meta.index]
        node.durable.snapshot_index = meta.index

    def _nemesis_drift(self) -> None:
        node = self.nodes[self.rng.choice(self.all_ids)]
        node.tick_period = self.rng.choice((TICK * 7 // 10, TICK, TICK, TICK * 13 // 10))

    # == liveness ============================================================================
    def heal_and_check_liveness(self, timeouts: int = 12) -> bool:
        """Stop all faults, restart every node, and require that a proposal commits within
        `timeouts` election timeouts."""
        self.faults_on = False
        self.blocked = set()
        for node in self.nodes.values():
            node.tick_period = TICK
            if node.core is None:
                self._start(node)
                self._schedule(self.rng.randrange(1, TICK), _TICK, (node.node_id, node.incarnation))
        deadline = self.time + timeouts * 2 * ELECTION_TICK * TICK
        marker = b"live%d" % self.seed
        next_try = self.time
        while self.time < deadline:
            if marker in self.committed_markers:
                return True
            if self.time >= next_try:
                self.propose(marker)
                next_try = self.time + ELECTION_TICK * TICK
            before = self.events
            self.run(50)
            if self.events == before:
                break
        return marker in self.committed_markers

    _handlers: dict[int, Callable[[Simulation, object], None]] = {}


def _node_event(payload: object) -> tuple[int, int]:
    """Events addressed to one incarnation of a node carry (node id, incarnation)."""
    assert isinstance(payload, tuple)
    node_id, incarnation = payload
    return int(node_id), int(incarnation)


Simulation._handlers = {
    _TICK: Simulation._on_tick,
    _DELIVER: Simulation._on_deliver,
    _PROCESS: Simulation._on_process,
    _PERSIST: Simulation._on_persist,
    _RESTART: Simulation._on_restart,
    _NEMESIS: Simulation._on_nemesis,
    _CLIENT: Simulation._on_client,
    _DAMAGE: Simulation._on_damage,
    _WIPE: Simulation._on_wipe,
}
