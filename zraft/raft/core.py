"""RaftCore: the whole Raft algorithm as a pure, deterministic state machine.

Inputs are method calls: `step(message)`, `tick()`, `propose(data)`, `propose_conf_change`,
`read_index(request_id)`, `transfer_leader(node)`, `hand_off_leadership()`, `compact(index)`,
`report_snapshot`.
Outputs are collected in a `Ready` (see zraft.raft.types.Ready for the shell's duties), and
`advance(ready)` tells the core that the shell did them. Nothing here touches sockets, disk,
clocks, threads or global randomness; the same inputs always give the same outputs.

Rules this module keeps (section numbers are the Raft paper's, "D" the dissertation's):
- §5.1: a message from a higher term makes us a follower of that term; lower terms are ignored
  (answered, so that a stale leader learns it is stale);
- §5.2, D§9.6: elections with randomized timeouts, optionally preceded by a pre-vote round;
- D§6.2: with check-quorum, a leader that has not heard from a majority within an election
  timeout steps down, and a follower that heard from a leader that recently ignores votes;
- §5.3: AppendEntries carries the previous entry's index and term; a mismatch is rejected;
- §5.4.2: a leader commits by counting replicas only entries of its own term;
- D§10.2.1: the leader's own write overlaps replication; it counts itself once durable;
- D§6.4: read-index: reads batch into one heartbeat round confirming leadership;
- D§3.10: leadership transfer by TimeoutNow;
- D§4.1: one membership change at a time, taking effect when appended;
- §7: compaction and snapshot installation;
- vote floor (zraft's own, see DESIGN.md): a node whose log was cut short after damage votes
  and campaigns as if its log still reached the floor, until it really does again;
- blank-start recovery (zraft's own, see DESIGN.md): a node that starts with no durable state
  votes only after enough other voters told it their terms and last log ids (its floor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zraft.raft.log import LogInvariantError, RaftLog
from zraft.raft.progress import Progress
from zraft.raft.quorum import committed_index, has_quorum
from zraft.raft.validate import MAX_TERM_JUMP, MAX_VALUE, problem
from zraft.raft.types import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Message,
    MsgType,
    ProgressState,
    ProposalDropped,
    RaftConfig,
    RandomSource,
    Ready,
    ReadState,
    Role,
    SnapshotMeta,
    SoftState,
)

# Messages a leader may send before its own write is durable (D§10.2.1): they carry only
# state that is already durable (its term) or that followers check for themselves (entries).
_SEND_BEFORE_PERSIST = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP,
                                  MsgType.TIMEOUT_NOW, MsgType.READ_INDEX_RESP})
_FROM_LEADER = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP})
RECOVERY_FLOOR = (MAX_VALUE, MAX_VALUE)
"""The vote floor of a node that started blank, until every other voter told it its state."""
_MAX_APPLY_BYTES = 4 << 20


@dataclass(slots=True)
class _ReadRound:
    """One quorum round that confirms leadership for every read batched into it."""

    index: int
    requests: list[tuple[int, int]]  # (requester node, request id)
    acks: set[int] = field(default_factory=set)


class RaftCore:
    """One node's Raft state. Not thread-safe: the shell owns it and calls it from one loop."""

    def __init__(self, config: RaftConfig, rand: RandomSource, initial: InitialState) -> None:
        self.config = config
        self.id = config.node_id
        self._rand = rand
        hs = initial.hard_state
        self.log = RaftLog(initial.snapshot, initial.entries, hs.commit, initial.applied)
        self.term = hs.term
        self.vote = hs.vote
        self.role = Role.FOLLOWER
        self.leader = NONE
        self.conf: ConfState = self.log.latest_conf()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_tick
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.campaign_deferred = False
        self.hand_off_round = 0  # how many hand-offs chose a target: rotates among candidates
        self.refused = 0
        """Peer messages dropped as impossible; `last_refusal` says why the latest was."""
        self.last_refusal = ""
        self.vote_floor: tuple[int, int] = hs.vote_floor()
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._read_states: list[ReadState] = []
        self._read_batch: list[tuple[int, int]] = []
        self._reads_before_commit: list[tuple[int, int]] = []
        self._read_rounds: dict[int, _ReadRound] = {}
        self._read_seq = 0
        self._prev_hard = HardState(hs.term, hs.vote, self.log.committed, *self.vote_floor)
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._ready_in_flight = False
        self._append_pending = False
        self._reset_randomized_timeout()
        self._maybe_clear_vote_floor()
        blank = hs == HardState() and not initial.entries and initial.snapshot.index == 0
        if config.recover_blank and blank and self.id in self.conf.voters:
            self.vote_floor = RECOVERY_FLOOR  # durable with the first hard state: a restart keeps it
        self._recovery: dict[int, tuple[int, tuple[int, int]]] = {}
        self._recovery_elapsed = config.election_tick  # the first query goes on the first tick
        self._recovery_nonce = rand.randrange(MAX_VALUE) + 1 if self.recovering else 0
        """Echoed by answers, so that one sent to an earlier incarnation (before a wipe) is not taken."""
        self._finish_recovery_if_told()

    # == public inputs =======================================================================
    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.recovering:
            self._tick_recovery()
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, data: bytes) -> int:
        """Append `data` as a new entry on the leader; returns its index.
        Raises ProposalDropped when this node cannot take proposals now."""
        self._check_can_propose()
        return self._append_local(EntryKind.NORMAL, data)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a one-server membership change (D§4.1); returns its index."""
        self._check_can_propose()
        if self.pending_conf_index > self.log.committed:
            raise ProposalDropped("another membership change is not yet committed")
        if self.log.term(self.log.committed) != self.term:
            raise ProposalDropped("the leader has not yet committed an entry of its term")
        new_conf = apply_conf_change(self.conf, change)
        index = self._append_local(EntryKind.CONF, new_conf.encode())
        self.pending_conf_index = index
        return index

    def read_index(self, request_id: int) -> bool:
        """Ask for a linearizable read point; it comes back as a ReadState in a later Ready.
        Returns False when the request cannot be served (no known leader)."""
        if self.role == Role.LEADER:
            self._queue_read(self.id, request_id)
            return True
        if self.leader == NONE:
            return False
        self._send(Message(MsgType.READ_INDEX, to=self.leader, frm=self.id, term=self.term,
                           context=request_id))
        return True

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to `target` (D§3.10). Only a leader acts on it."""
        if self.role != Role.LEADER or target == self.id or target not in self.conf.voters:
            return
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0
        progress = self.progress[target]
        if progress.match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target, send_if_empty=True)

    def transfer_candidates(self) -> list[int]:
        """The voters leadership could be handed to, best first: recently active voters other
        than this leader (the D§6.2 marks: set on becoming leader and on every answer, cleared
        each election timeout when check-quorum is on), the most up-to-date first (highest match, so the fewest entries to send before
        TimeoutNow, D§3.10), ties by node id. Empty when this node is not the leader."""
        if self.role != Role.LEADER:
            return []
        ranked = sorted((-progress.match, node) for node, progress in self.progress.items()
                        if node != self.id and node in self.conf.voters and progress.recent_active)
        return [node for _, node in ranked]

    def hand_off_leadership(self) -> int:
        """Start handing leadership away (D§3.10) from a leader that should not lead, one that
        cannot take writes, say; returns the chosen target, or NONE when this node is not the
        leader, a transfer is already under way, or no voter qualifies.

        The target is the next of `transfer_candidates()` in rotation: each call that picks a
        target moves the rotation on, so if the best candidate keeps failing to take over (it
        cannot take writes either, and ignores TimeoutNow), later calls move down the ranking
        (the ranking is taken afresh each call, so a change in it can repeat a node).
        The caller paces the calls; a call while a transfer is under way changes nothing."""
        if self.role != Role.LEADER or self.lead_transferee != NONE:
            return NONE
        candidates = self.transfer_candidates()
        if not candidates:
            return NONE
        target = candidates[self.hand_off_round % len(candidates)]
        self.hand_off_round += 1
        self.transfer_leader(target)
        return target

    def compact(self, index: int) -> SnapshotMeta:
        """The state machine captured everything up to `index` in a snapshot that the shell
        stored; entries up to it are dropped. Returns the snapshot's metadata."""
        return self.log.compact(index)

    def report_snapshot(self, node: int, ok: bool) -> None:
        """The shell tells the leader whether sending a snapshot to `node` failed."""
        progress = self.progress.get(node)
        if progress is not None and progress.state == ProgressState.SNAPSHOT and not ok:
            progress.become_probe()

    def defer_campaign(self, deferred: bool) -> None:
        """While deferred, this node waits two extra election timeouts before starting an
        election and ignores TimeoutNow. The shell sets it while the node cannot take writes
        (its disk is full): a healthy node then wins the election first, yet a cluster in which
        every node is deferred still elects one (reads keep working). Votes are unaffected."""
        self.campaign_deferred = deferred

    def campaign(self) -> None:
        """Start an election now (used by tests and operators; normally the timer does it)."""
        if self._promotable():
            self._start_campaign(pre_vote=self.config.pre_vote, transfer=False)

    def step(self, msg: Message) -> None:
        """Feed one message received from a peer. A message no correct peer would send is
        dropped and counted in `refused`, never raised on (zraft.raft.validate)."""
        reason = problem(msg, self.id)
        if reason is None and msg.term > self.term + MAX_TERM_JUMP:
            reason = f"term {msg.term}, more than {MAX_TERM_JUMP} ahead of this node's {self.term}"
        if reason is not None:
            self._refuse(reason)
            return
        if msg.type in (MsgType.STATE_QUERY, MsgType.STATE_REPLY):
            self._handle_state_message(msg)  # term-free: it asks and tells, it changes no role
            return
        if msg.term > self.term:
            if not self._accept_higher_term(msg):
                return
        elif msg.term < self.term:
            self._answer_stale_term(msg)
            return
        if msg.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(msg)
            return
        handler = self._role_handlers[self.role].get(msg.type)
        if handler is not None:
            handler(self, msg)

    # == outputs =============================================================================
    def has_ready(self) -> bool:
        if self._ready_in_flight:
            return False
        return bool(self._msgs or self._msgs_after or self._read_states or self._read_batch
                    or self._append_pending
                    or self.log.stable < self.log.last_index() or self.log.pending_snapshot
                    or self._hard_state() != self._prev_hard or self._soft_state() != self._prev_soft
                    or self._applicable_hi() > self.log.applied)

    def ready(self) -> Ready:
        """Collect everything the shell must do now. Call advance() before the next ready()."""
        if self._ready_in_flight:
            raise LogInvariantError("ready() called again before advance()")
        self._flush_appends()
        self._flush_read_batch()
        hard = self._hard_state()
        soft = self._soft_state()
        rd = Ready()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        if hard != self._prev_hard:
            rd.hard_state = hard
        rd.entries = self.log.unstable_entries()
        rd.snapshot = self.log.pending_snapshot
        rd.committed_entries = self._committed_to_apply()
        rd.messages, rd.messages_after_persist = self._split_messages(hard)
        rd.read_states = tuple(self._read_states)
        rd.must_sync = bool(rd.entries) or rd.snapshot is not None or (
            rd.hard_state is not None and ((hard.term, hard.vote) != (self._prev_hard.term, self._prev_hard.vote)
                                           or hard.vote_floor() > self._prev_hard.vote_floor()))
        self._msgs, self._msgs_after, self._read_states = [], [], []
        self._ready_in_flight = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell persisted, sent and applied everything in `rd`."""
        self._ready_in_flight = False
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.log.snapshot_installed(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
        if self.role == Role.LEADER and self.id in self.progress:
            self.progress[self.id].maybe_update(self.log.stable)
            if self._maybe_commit():
                self._broadcast_append(send_if_empty=True)

    def hard_state(self) -> HardState:
        return self._hard_state()

    # == hooks kept small so tests can plant bugs in subclasses ==============================
    def _committed_to_apply(self) -> tuple[Entry, ...]:
        """Committed, durable entries not yet handed to the state machine."""
        return self.log.next_committed(self._applicable_hi(), _MAX_APPLY_BYTES)

    def _applicable_hi(self) -> int:
        """The last index the state machine may apply: committed and locally durable."""
        return self.log.applicable_hi()

    def _log_consistent(self, index: int, log_term: int) -> bool:
        """§5.3: accept entries only if our log holds the entry that precedes them."""
        return self.log.match_term(index, log_term)

    def _candidate_log_ok(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: vote only for a candidate whose log is at least as up-to-date as ours, and
        (vote floor, rule a) at least as up-to-date as the log this node had before it lost
        part of it: entries it acknowledged may be among those lost, and a majority that
        committed them may have counted it."""
        return (not self.recovering and self.log.is_up_to_date(last_index, last_term)
                and (last_term, last_index) >= self.vote_floor)

    def _can_commit_by_counting(self, index: int) -> bool:
        """§5.4.2: only entries of the leader's current term are committed by counting."""
        return self.log.term(index) == self.term

    # == term handling =======================================================================
    def _accept_higher_term(self, msg: Message) -> bool:
        """Handle a message from a higher term; False means drop it."""
        if msg.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            transfer = msg.context == CAMPAIGN_TRANSFER
            in_lease = (self.config.check_quorum and self.leader != NONE
                        and self.election_elapsed < self.config.election_tick)
            if in_lease and not transfer:
                return False
        if msg.type == MsgType.PRE_VOTE:
            return True
        if msg.type == MsgType.PRE_VOTE_RESP and not msg.reject:
            return True
        leader = msg.frm if msg.type in _FROM_LEADER else NONE
        self._become_follower(msg.term, leader)
        return True

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self.last_refusal = reason

    def _answer_stale_term(self, msg: Message) -> None:
        if msg.type in (MsgType.APP, MsgType.HEARTBEAT):
            self._send(Message(MsgType.APP_RESP, to=msg.frm, frm=self.id, term=self.term))
        elif msg.type == MsgType.PRE_VOTE:
            self._send(Message(MsgType.PRE_VOTE_RESP, to=msg.frm, frm=self.id, term=self.term,
                               reject=True))

    def _handle_vote_request(self, msg: Message) -> None:
        pre = msg.type == MsgType.PRE_VOTE
        can_vote = (self.vote == msg.frm
                    or (self.vote == NONE and self.leader == NONE)
                    or (pre and msg.term > self.term))
        resp_type = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        if can_vote and self._candidate_log_ok(msg.index, msg.log_term):
            reply = Message(resp_type, to=msg.frm, frm=self.id, term=msg.term)
            if pre:
                self._send(reply)
            else:
                self.election_elapsed = 0
                self.vote = msg.frm
                self._send(reply)
        else:
            self._send(Message(resp_type, to=msg.frm, frm=self.id, term=self.term, reject=True))

    # == role transitions ====================================================================
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self._read_rounds = {}
        self._read_batch = []
        self._reads_before_commit = []
        self.progress = {}

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # A pre-candidate changes neither term nor vote: that is the point of pre-vote.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = NONE
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        for node in self.conf.members():
            self._add_progress(node)
        if self.id in self.progress:  # not when standing for the change that removed it
            self.progress[self.id].match = self.log.stable
        # The last entry of the old log may be a membership change not yet committed.
        self.pending_conf_index = self.log.last_index()
        self._append_local(EntryKind.NORMAL, b"")

    def _add_progress(self, node: int) -> None:
        progress = Progress(self.log.last_index() + 1, self.config.max_inflight,
                            node in self.conf.learners, self.config.max_inflight_bytes)
        progress.recent_active = True
        self.progress[node] = progress

    def _reset_randomized_timeout(self) -> None:
        tick = self.config.election_tick
        self.randomized_timeout = tick + self._rand.randrange(tick)

    def _promotable(self) -> bool:
        """Whether this node may stand for election: as a voter of its latest configuration,
        or as the voter an uncommitted change has just taken out of it (below). Not while
        below its vote floor (rule b): its vote for itself would break rule a, and it may
        lack committed entries. Not at a term of MAX_VALUE: the next one would be out of range
        for every peer (validate.py)."""
        return ((self.id in self.conf.voters or self._removed_by_uncommitted_change())
                and self.log.pending_snapshot is None and not self.below_vote_floor()
                and not self.recovering and self.term < MAX_VALUE)

    def _removed_by_uncommitted_change(self) -> bool:
        """Whether the latest configuration in this log is not yet committed (as far as this
        node knows) and took this node out of the voters of the one before it.

        Such a node may still stand (D§4.2.2 lets a leader manage a configuration it is not
        part of until that configuration commits; this extends it to winning an election
        for it). Without it the cluster can wedge: a leader that appended its own removal
        and lost leadership before the change committed may hold the only log that the
        others must see (its entries went to one node that then lost them, or is down), so
        it refuses every candidate as less up-to-date while it cannot stand itself
        (simulator seeds 507495 and 508205, 3 nodes, issue 10).

        Safe as an ordinary candidacy is: it counts only votes of its latest configuration's
        voters (`_record_vote` ignores the rest, itself included), and two configurations
        that can be the latest in logs of the same term differ by at most one server, so any
        majority of one meets any majority of the other (D§4.3): two leaders of one term
        would share a voter, who votes once. Leader completeness holds as for any candidate:
        each granting voter judged its log at least as up-to-date. Once it leads, it commits
        the change with the new configuration's majority and steps down
        (`_maybe_step_down_after_removal`). A node whose removal is known committed may not
        stand: the others have the change and elect among themselves."""
        if not self.log.conf_indexes:
            return False
        index = self.log.conf_indexes[-1]
        return index > self.log.committed and self.id in self.log.conf_at(index - 1).voters

    # == vote floor ==========================================================================
    def below_vote_floor(self) -> bool:
        """True while this node's own last log id is behind its vote floor."""
        return (self.log.last_term(), self.log.last_index()) < self.vote_floor

    def _maybe_clear_vote_floor(self) -> None:
        """Rule c: once the log reaches the floor, the floor says nothing the log does not, so
        it is cleared (and persisted with the next hard state). Called wherever the log grows
        or is replaced. A log that reaches the floor holds every entry the lost part held
        that can have been committed (the same reasoning as §5.4.1's up-to-date check), and
        later truncations only ever remove uncommitted entries."""
        if self.vote_floor != (0, 0) and not self.below_vote_floor():
            self.vote_floor = (0, 0)

    # == blank-start recovery =================================================================
    @property
    def recovering(self) -> bool:
        """Whether this node started blank and has not yet heard from every other voter. Its
        vote floor is then RECOVERY_FLOOR, which no log reaches: it votes for nobody and does
        not campaign (rules a and b), and the floor, being part of the hard state, survives
        restarts until the recovery is done."""
        return self.vote_floor == RECOVERY_FLOOR

    def recovery_needs(self) -> int:
        """How many other voters must tell a blank node their state before it may vote: all of
        them (none in a cluster of one, where nothing is left to ask). Fewer would do for the
        floor (N - q + 1 meet every majority that contains this node), but not for its vote:
        a candidate it voted for before the wipe may still be collecting votes, and only that
        candidate is sure to know the term (DESIGN.md)."""
        return len([node for node in self.conf.voters if node != self.id])

    def _tick_recovery(self) -> None:
        """Ask every other voter for its state once per election timeout until told enough
        (the configuration may change meanwhile: the entries it receives can carry one)."""
        self._finish_recovery_if_told()
        if not self.recovering:
            return
        self._recovery_elapsed += 1
        if self._recovery_elapsed < self.config.election_tick:
            return
        self._recovery_elapsed = 0
        for node in self.conf.voters:
            if node != self.id and node not in self._recovery:
                self._send(Message(MsgType.STATE_QUERY, to=node, frm=self.id, term=self.term,
                                   context=self._recovery_nonce))

    def _handle_state_message(self, msg: Message) -> None:
        """STATE_QUERY: answer with this node's term and last log id (or its vote floor, when
        that is higher: it stands for entries the node may have had). STATE_REPLY: note it.
        A blank node's answer counts too (a new cluster's nodes all start blank): the rule
        holds while the nodes it hears from kept their state, the one assumption no Raft can
        do without (a majority that lost its disks has lost what it committed)."""
        if msg.type == MsgType.STATE_QUERY:
            last = (self.log.last_term(), self.log.last_index())
            if not self.recovering:  # a floor stands for entries this node may have had
                last = max(last, self.vote_floor)
            self._send(Message(MsgType.STATE_REPLY, to=msg.frm, frm=self.id, term=self.term,
                               index=last[1], log_term=last[0], context=msg.context))
            return
        if (self.recovering and msg.context == self._recovery_nonce and msg.frm in self.conf.voters
                and msg.log_term <= msg.term):
            self._recovery[msg.frm] = (msg.term, (msg.log_term, msg.index))
            self._finish_recovery_if_told()

    def _finish_recovery_if_told(self) -> None:
        """Once every other voter answered: take the highest term they know, as if this node
        had voted in it (it may have, in any term up to that one, and must not vote in one of
        those again: the vote is set to itself, which grants nobody else), and as the vote
        floor the (q-1)-th highest log id they gave, q a majority: an entry it acknowledged
        that can have committed is on a majority with it, so on at least q-1 of them, whose
        log ids are all at least that entry's; a log that reaches the floor holds it (rule a).
        Not the highest: that one may stand for entries on a single voter that never
        committed, and if that voter then leaves the configuration no one can reach it
        (simulator seed 16000715, 5 nodes). From then on it is an ordinary node with a floor."""
        if not self.recovering or sum(1 for node in self._recovery if node in self.conf.voters) < self.recovery_needs():
            return
        term = max((t for t, _ in self._recovery.values()), default=0)
        lasts = sorted((last for node, (_, last) in self._recovery.items() if node in self.conf.voters), reverse=True)
        majority = len(self.conf.voters) // 2 + 1
        floor = lasts[majority - 2] if majority >= 2 and len(lasts) >= majority - 1 else (0, 0)
        self._recovery = {}
        if term > self.term:
            self._become_follower(term, NONE)
        if term == self.term and term > 0 and self.vote == NONE:
            self.vote = self.id
        self.vote_floor = floor  # lower than RECOVERY_FLOOR: needs no fsync (a crash keeps the stricter one)
        self._maybe_clear_vote_floor()

    # == elections ===========================================================================
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        timeout = self.randomized_timeout
        if self.campaign_deferred:
            timeout += 2 * self.config.election_tick
        if self._promotable() and self.election_elapsed >= timeout:
            self.election_elapsed = 0
            self._start_campaign(pre_vote=self.config.pre_vote, transfer=False)

    def _start_campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_type, vote_term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, vote_term = MsgType.VOTE, self.term
        if self._record_vote(self.id, granted=True):
            return
        context = CAMPAIGN_TRANSFER if transfer else 0
        for node in self.conf.voters:
            if node != self.id:
                self._send(Message(vote_type, to=node, frm=self.id, term=vote_term,
                                   index=self.log.last_index(), log_term=self.log.last_term(),
                                   context=context))

    def _record_vote(self, node: int, granted: bool) -> bool:
        """Count a vote; returns True once the election is decided either way. §5.2: a
        candidate wins with votes from a majority of the voters (two majorities of one term
        would share a voter, who votes once); once a majority refused, it cannot win."""
        if node not in self.conf.voters:
            return False
        self.votes.setdefault(node, granted)
        grants = {n for n, g in self.votes.items() if g}
        refusals = {n for n, g in self.votes.items() if not g}
        if has_quorum(self.conf.voters, grants):
            if self.role == Role.PRE_CANDIDATE:
                self._start_campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if has_quorum(self.conf.voters, refusals):
            self._become_follower(self.term, NONE)
            return True
        return False

    def _step_candidate_vote_resp(self, msg: Message) -> None:
        expected = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if msg.type == expected:
            self._record_vote(msg.frm, granted=not msg.reject)

    def _step_candidate_from_leader(self, msg: Message) -> None:
        self._become_follower(msg.term, msg.frm)
        self._step_follower_dispatch(msg)

    def _step_follower_dispatch(self, msg: Message) -> None:
        handler = _FOLLOWER_HANDLERS.get(msg.type)
        if handler is not None:
            handler(self, msg)

    # == follower ============================================================================
    def _heard_from_leader(self, msg: Message) -> None:
        self.election_elapsed = 0
        self.leader = msg.frm

    def _handle_append(self, msg: Message) -> None:
        self._heard_from_leader(msg)
        if msg.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, to=msg.frm, frm=self.id, term=self.term,
                               index=self.log.committed))
            return
        if not self._log_consistent(msg.index, msg.log_term):
            hint_index, hint_term = self.log.find_conflict_by_term(
                min(msg.index, self.log.last_index()), msg.log_term)
            self._send(Message(MsgType.APP_RESP, to=msg.frm, frm=self.id, term=self.term,
                               index=msg.index, reject=True, reject_hint=hint_index,
                               log_term=hint_term))
            return
        last_new = msg.index + len(msg.entries)
        conflict = self.log.find_conflict(msg.entries)
        if conflict:
            if conflict <= self.log.last_index():
                self._drop_acks_beyond(conflict - 1)
            self.log.append(msg.entries[conflict - msg.index - 1:])
            self._conf_maybe_changed()
            self._maybe_clear_vote_floor()
        self.log.commit_to(min(msg.commit, last_new))
        self._send(Message(MsgType.APP_RESP, to=msg.frm, frm=self.id, term=self.term,
                           index=last_new))

    def _drop_acks_beyond(self, index: int) -> None:
        """The log past `index` is being replaced: acknowledgements still queued for entries
        beyond it would claim entries this node no longer has, and a stale leader could count
        them toward a commit. Dropping a message is always safe in Raft."""
        self._msgs_after = [m for m in self._msgs_after
                            if not (m.type == MsgType.APP_RESP and not m.reject and m.index > index)]

    def _handle_heartbeat(self, msg: Message) -> None:
        self._heard_from_leader(msg)
        self.log.commit_to(min(msg.commit, self.log.last_index()))
        # Below the vote floor, the leader may believe this node holds entries it lost; say
        # where the log really ends (see _handle_heartbeat_resp). The same when the leader's
        # commit for us (at most what we acknowledged to it) lies beyond our log: we lost
        # entries without knowing it (a wiped data folder), and a quiet leader would otherwise
        # never send the append whose rejection tells it.
        lost = self.below_vote_floor() or msg.commit > self.log.last_index()
        self._send(Message(MsgType.HEARTBEAT_RESP, to=msg.frm, frm=self.id, term=self.term,
                           context=msg.context, reject=lost,
                           reject_hint=self.log.last_index() if lost else 0))

    def _handle_snapshot(self, msg: Message) -> None:
        self._heard_from_leader(msg)
        assert msg.snapshot is not None
        if self._restore(msg.snapshot):
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(Message(MsgType.APP_RESP, to=msg.frm, frm=self.id, term=self.term, index=index))

    def _restore(self, snapshot: SnapshotMeta) -> bool:
        if snapshot.index <= self.log.committed:
            return False
        if self.log.match_term(snapshot.index, snapshot.term):
            self.log.commit_to(snapshot.index)
            return False
        self._drop_acks_beyond(snapshot.index)
        self.log.restore(snapshot)
        self._conf_maybe_changed()
        self._maybe_clear_vote_floor()
        return True

    def _handle_timeout_now(self, msg: Message) -> None:
        if self._promotable() and not self.campaign_deferred:
            self._start_campaign(pre_vote=False, transfer=True)

    def _handle_read_index_resp(self, msg: Message) -> None:
        if msg.frm != self.leader:
            self._refuse(f"a read index from node {msg.frm}, which is not the leader")
            return
        self._read_states.append(ReadState(msg.index, msg.context))

    # == leader ==============================================================================
    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
            self.lead_transferee = NONE
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(context=0)

    def _quorum_active(self) -> bool:
        """D§6.2 check-quorum: whether a majority of voters (this leader included) was heard
        from since the last check; the marks are cleared for the next election timeout."""
        active = {node for node in self.conf.voters
                  if node == self.id or (node in self.progress and self.progress[node].recent_active)}
        for node, progress in self.progress.items():
            if node != self.id:
                progress.recent_active = False
        return has_quorum(self.conf.voters, active)

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise ProposalDropped("not the leader")
        if self.lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress")

    def _append_local(self, kind: EntryKind, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, kind, data)])
        if kind == EntryKind.CONF:
            self._conf_maybe_changed()
        self._append_pending = True
        return index

    def _flush_appends(self) -> None:
        """Batching: every entry appended since the last Ready leaves in one AppendEntries
        per follower (as far as flow control allows), not one message per proposal."""
        if self._append_pending and self.role == Role.LEADER:
            self._broadcast_append()
        self._append_pending = False

    def _broadcast_append(self, send_if_empty: bool = False) -> None:
        for node in self.progress:
            if node != self.id:
                self._send_append(node, send_if_empty)

    def _broadcast_heartbeat(self, context: int) -> None:
        for node, progress in self.progress.items():
            if node != self.id:
                commit = min(progress.match, self.log.committed)
                self._send(Message(MsgType.HEARTBEAT, to=node, frm=self.id, term=self.term,
                                   commit=commit, context=context))

    def _send_append(self, node: int, send_if_empty: bool) -> None:
        progress = self.progress[node]
        if progress.is_paused():
            return
        prev_index = progress.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            self._send_snapshot(node, progress)
            return
        entries = self.log.slice(progress.next, self.log.last_index() + 1, self.config.max_msg_bytes)
        if not entries and not send_if_empty and progress.state != ProgressState.PROBE:
            return
        self._send(Message(MsgType.APP, to=node, frm=self.id, term=self.term, index=prev_index,
                           log_term=prev_term, entries=entries, commit=self.log.committed))
        progress.sent(entries[-1].index if entries else prev_index, bool(entries), sum(len(e.data) for e in entries))

    def _send_snapshot(self, node: int, progress: Progress) -> None:
        if not progress.recent_active:
            return
        snapshot = self.log.snapshot
        self._send(Message(MsgType.SNAP, to=node, frm=self.id, term=self.term, snapshot=snapshot))
        progress.become_snapshot(snapshot.index)

    def _send_timeout_now(self, node: int) -> None:
        self._send(Message(MsgType.TIMEOUT_NOW, to=node, frm=self.id, term=self.term))

    def _handle_append_resp(self, msg: Message) -> None:
        progress = self.progress.get(msg.frm)
        if progress is None:
            return
        if not msg.reject and msg.index > self.log.last_index():
            self._refuse(f"an acknowledgement of {msg.index}, beyond this leader's log")
            return
        progress.recent_active = True
        if msg.reject:
            probe_from, _ = self.log.find_conflict_by_term(msg.reject_hint, msg.log_term)
            if progress.maybe_decrease_to(msg.index, probe_from):
                if progress.state == ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(msg.frm, send_if_empty=True)
            return
        # In PROBE, an ack of exactly `match` still proves where the logs agree (etcd does the same).
        probe_confirmed = progress.state == ProgressState.PROBE and msg.index == progress.match
        if not progress.maybe_update(msg.index) and not probe_confirmed:
            return
        if progress.state == ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state == ProgressState.SNAPSHOT and progress.match >= progress.pending_snapshot:
            progress.become_probe()
            progress.become_replicate()
        if self._maybe_commit():
            self._broadcast_append(send_if_empty=True)
        else:
            while not progress.is_paused() and progress.next <= self.log.last_index():
                before = progress.next
                self._send_append(msg.frm, send_if_empty=False)
                if progress.next == before:
                    break
        if msg.frm == self.lead_transferee and progress.match == self.log.last_index():
            self._send_timeout_now(msg.frm)

    def _handle_heartbeat_resp(self, msg: Message) -> None:
        progress = self.progress.get(msg.frm)
        if progress is None:
            return
        progress.recent_active = True
        if msg.reject and msg.reject_hint < progress.match:
            # The follower lost entries it acknowledged (its log was cut short after damage):
            # `match` overstates it, and rejections at or below `match` would be ignored as
            # stale forever. Forget it and probe again. Lowering `match` is always safe: the
            # commit index never goes back, and the follower's vote floor keeps its old
            # acknowledgements honest (see DESIGN.md).
            progress.forget_match(msg.reject_hint + 1)
        progress.probe_sent = False
        if progress.state == ProgressState.REPLICATE and progress.is_paused():
            progress.free_one_slot()
        if progress.state == ProgressState.SNAPSHOT:
            progress.snapshot_wait += 1
            if progress.snapshot_wait > self.config.election_tick:
                progress.become_probe()
        if progress.match < self.log.last_index():
            self._send_append(msg.frm, send_if_empty=True)
        if msg.context:
            self._ack_read_round(msg.context, msg.frm)

    def _maybe_commit(self) -> bool:
        """§5.3/§5.4: advance the commit index to the largest index a majority of voters
        hold, if it is of this leader's term (§5.4.2). A voter without progress counts as 0;
        with no voters the index is 0, which is never above the commit index."""
        quorum_match = committed_index(
            self.conf.voters, lambda n: self.progress[n].match if n in self.progress else 0)
        if quorum_match <= self.log.committed or not self._can_commit_by_counting(quorum_match):
            return False
        first_of_term = self.log.term(self.log.committed) != self.term
        self.log.commit_to(quorum_match)
        if first_of_term:
            self._release_reads_before_commit()
        self._maybe_step_down_after_removal()
        return True

    def _maybe_step_down_after_removal(self) -> None:
        """D§4.2.2: a leader removed from the configuration steps down once that change commits."""
        if self.id not in self.conf.voters and self.pending_conf_index <= self.log.committed:
            self._become_follower(self.term, NONE)

    # == read index ==========================================================================
    def _handle_read_index(self, msg: Message) -> None:
        self._queue_read(msg.frm, msg.context)

    def _queue_read(self, requester: int, request_id: int) -> None:
        if self.log.term(self.log.committed) != self.term:
            self._reads_before_commit.append((requester, request_id))
        else:
            self._read_batch.append((requester, request_id))

    def _release_reads_before_commit(self) -> None:
        self._read_batch.extend(self._reads_before_commit)
        self._reads_before_commit = []

    def _flush_read_batch(self) -> None:
        """Every read queued since the last Ready shares one leadership-confirming round."""
        if not self._read_batch or self.role != Role.LEADER:
            return
        self._read_seq += 1
        round_ = _ReadRound(self.log.committed, self._read_batch, {self.id})
        self._read_batch = []
        self._read_rounds[self._read_seq] = round_
        if self._round_has_quorum(round_):
            self._release_read_rounds(self._read_seq)
        else:
            self._broadcast_heartbeat(context=self._read_seq)

    def _ack_read_round(self, seq: int, node: int) -> None:
        round_ = self._read_rounds.get(seq)
        if round_ is None:
            return
        round_.acks.add(node)
        if self._round_has_quorum(round_):
            self._release_read_rounds(seq)

    def _round_has_quorum(self, round_: _ReadRound) -> bool:
        """D§6.4: a read round is confirmed once a majority of voters acknowledged the
        heartbeat that opened it: this node was then still the leader when the round began,
        so the round's index (its commit index then) covers every write acknowledged before."""
        return has_quorum(self.conf.voters, round_.acks)

    def _release_read_rounds(self, upto: int) -> None:
        for seq in sorted(s for s in self._read_rounds if s <= upto):
            round_ = self._read_rounds.pop(seq)
            for requester, request_id in round_.requests:
                if requester == self.id:
                    self._read_states.append(ReadState(round_.index, request_id))
                else:
                    self._send(Message(MsgType.READ_INDEX_RESP, to=requester, frm=self.id,
                                       term=self.term, index=round_.index, context=request_id))

    # == membership ==========================================================================
    def _conf_maybe_changed(self) -> None:
        conf = self.log.latest_conf()
        if conf == self.conf:
            return
        self.conf = conf
        if self.role != Role.LEADER:
            return
        for node in list(self.progress):
            if node not in conf.members():
                del self.progress[node]
        for node in conf.members():
            if node not in self.progress:
                self._add_progress(node)
            self.progress[node].is_learner = node in conf.learners
        if self.lead_transferee not in conf.voters:
            self.lead_transferee = NONE

    # == plumbing ============================================================================
    def _send(self, msg: Message) -> None:
        if self.role == Role.LEADER and msg.type in _SEND_BEFORE_PERSIST:
            self._msgs.append(msg)
        else:
            self._msgs_after.append(msg)

    def _split_messages(self, hard: HardState) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        """Which messages may leave before this cycle's writes are durable, and which after."""
        if (hard.term, hard.vote) != (self._prev_hard.term, self._prev_hard.vote):
            # The term or vote changed in this cycle: nothing may leave before it is durable.
            return (), tuple(self._msgs + self._msgs_after)
        return tuple(self._msgs), tuple(self._msgs_after)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed, *self.vote_floor)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    _role_handlers: dict[Role, dict[MsgType, Callable[[RaftCore, Message], None]]]


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after one change; raises ProposalDropped for a meaningless change."""
    voters, learners = set(conf.voters), set(conf.learners)
    node = change.node_id
    if change.kind == ConfChangeKind.ADD_LEARNER:
        if node in voters or node in learners:
            raise ProposalDropped(f"node {node} is already a member")
        learners.add(node)
    elif change.kind == ConfChangeKind.ADD_VOTER:
        if node in voters:
            raise ProposalDropped(f"node {node} is already a voter")
        learners.discard(node)
        voters.add(node)
    else:
        if node not in voters and node not in learners:
            raise ProposalDropped(f"node {node} is not a member")
        if voters == {node}:
            raise ProposalDropped("cannot remove the last voter")
        voters.discard(node)
        learners.discard(node)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


_FOLLOWER_HANDLERS: dict[MsgType, Callable[[RaftCore, Message], None]] = {
    MsgType.APP: RaftCore._handle_append,
    MsgType.HEARTBEAT: RaftCore._handle_heartbeat,
    MsgType.SNAP: RaftCore._handle_snapshot,
    MsgType.TIMEOUT_NOW: RaftCore._handle_timeout_now,
    MsgType.READ_INDEX_RESP: RaftCore._handle_read_index_resp,
}

_CANDIDATE_HANDLERS: dict[MsgType, Callable[[RaftCore, Message], None]] = {
    MsgType.APP: RaftCore._step_candidate_from_leader,
    MsgType.HEARTBEAT: RaftCore._step_candidate_from_leader,
    MsgType.SNAP: RaftCore._step_candidate_from_leader,
    MsgType.VOTE_RESP: RaftCore._step_candidate_vote_resp,
    MsgType.PRE_VOTE_RESP: RaftCore._step_candidate_vote_resp,
}

_LEADER_HANDLERS: dict[MsgType, Callable[[RaftCore, Message], None]] = {
    MsgType.APP_RESP: RaftCore._handle_append_resp,
    MsgType.HEARTBEAT_RESP: RaftCore._handle_heartbeat_resp,
    MsgType.READ_INDEX: RaftCore._handle_read_index,
}

RaftCore._role_handlers = {
    Role.FOLLOWER: _FOLLOWER_HANDLERS,
    Role.PRE_CANDIDATE: _CANDIDATE_HANDLERS,
    Role.CANDIDATE: _CANDIDATE_HANDLERS,
    Role.LEADER: _LEADER_HANDLERS,
}
