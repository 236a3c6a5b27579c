"""The raft process of a node: the pure RaftCore driven by one synchronous poll loop.

It owns the core, the durable log store and every Raft socket:
- peer inbox: ROUTER bound to this node's `raft` address; one DEALER per other peer;
- local RPC: ROUTER bound to `raft_rpc` (Propose, ReadIndex, StatusRequest, FetchEntries,
  ConfChangeRequest, TransferLeader);
- PUB bound to `raft_pub`: CommitNotice hints on every change and every 200 ms.

Rules of this module:
- one thread, one loop; a turn is: poll (timeout = next deadline), drain every readable socket
  (bounded), tick as often as due, then run the Ready cycle until the core has nothing left;
- the Ready contract is kept to the letter: send `messages`, persist (one write, one fsync for
  the whole turn), send `messages_after_persist`, answer reads, `advance`;
- it does not apply entries: the store process pulls committed entries with FetchEntries; only
  entries both committed and durable here (`durable_commit`) are ever served or announced;
- bad input from outside (undecodable frames, bad requests) is counted and dropped; a broken
  invariant inside (log corruption, LogInvariantError) ends the process with a non-zero exit
  code so that the supervisor restarts it;
- a log with damage in synced data found at start is salvaged when that is safe: the damaged
  folder is moved aside, the node starts from the readable prefix with a vote floor and fetches
  the rest from the leader (zraft/logstore/salvage.py, raft/DESIGN.md); otherwise the process
  exits non-zero, as before, and an operator must replace the node's data;
- a write to the log that fails with an OSError (a full disk above all) ends nothing: the log
  store drops what is not known durable, the core is rebuilt from the disk exactly as a restart
  would, and the node sits out for PERSIST_RETRY_S (peer traffic dropped, no ticks, writes
  refused with "disk full: ...") before trying again; while its disk (or its store's) is full
  the core defers campaigning and a leader hands leadership to another node;
- everything is bounded: uncommitted proposals, pending reads (each with a deadline), and the
  messages drained per socket per turn.
"""

from __future__ import annotations

import cProfile
import itertools
import logging
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import zmq

from zraft.config import ConfigError, NodeConfig, load
from zraft.logstore import FileLogStore, LogCompactedError, LogCorruptError, LogStore, LogStoreError, fsutil
from zraft.logstore.salvage import SalvageRefused, finish_interrupted, quarantine, salvage
from zraft.raft import (
    NONE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    HardState,
    InitialState,
    LogInvariantError,
    RaftLog,
    Message,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    ReadState,
    Role,
    SnapshotMeta,
    SoftState,
)
from zraft.transport import PeerLinks, coalesce, peer_inbox, publisher, recv_batch, rpc_server, send_nowait
from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import (
    CommitNotice,
    ConfChangeRequest,
    EntriesReply,
    Error,
    FetchEntries,
    Ok,
    Propose,
    ProposeBatch,
    Proposed,
    ProposedBatch,
    ReadIndex,
    ReadIndexReply,
    StatusReply,
    StatusRequest,
    TransferLeader,
    WireMessage,
)

log = logging.getLogger("zraft.raft_proc")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2

NOTICE_INTERVAL_S = 0.2
"""A CommitNotice goes out at least this often, as a heartbeat, even when nothing changed."""
MAX_DRAIN = 1024
"""Messages taken from one socket in one turn; the rest wait for the next turn."""
FETCH_CHUNK = 256
"""Entries read from the log store at a time while filling a FetchEntries reply."""
MAX_FETCH_WAIT_S = 1.0
"""Longest a long-poll FetchEntries (wait_ms > 0) is held before an empty reply."""
MAX_PARKED_FETCHES = 16
"""Long-poll fetches held at once; beyond this a fetch is answered at once, as without wait."""
PERSIST_RETRY_S = 1.0
"""After a failed log write the node sits out this long before it tries to persist again."""
STORE_FULL_TTL_S = 5.0
"""The store's "disk full" report (carried by its fetches, at least every second while it
lasts) is forgotten after this long without a fetch, e.g. when the store process died."""
TRANSFER_RETRY_S = 1.0
"""A leader that cannot take writes tries a leadership transfer this often."""

_CONF_OPS = {
    "add_learner": ConfChangeKind.ADD_LEARNER,
    "add_voter": ConfChangeKind.ADD_VOTER,
    "remove": ConfChangeKind.REMOVE,
}


@dataclass(slots=True)
class _PendingRead:
    identity: bytes
    request_id: int
    deadline: float


@dataclass(slots=True)
class _ParkedFetch:
    identity: bytes
    request: FetchEntries
    ready_at: float  # not answered before this (linger), unless it expires
    deadline: float


class RaftProcess:
    """The raft shell of one node. Owned by the thread that runs `serve()`; `stop()` may be
    called from a signal handler (it only sets a flag, seen at the start of the next turn)."""

    def __init__(self, config: NodeConfig, store: LogStore) -> None:
        """Load the log (bootstrapping an empty one if configured), build the core and bind
        every socket. Raises zmq.ZMQError on a bind failure, LogStoreError on a bad log."""
        self.config = config
        self.store = store
        self.stats: Counter[str] = Counter()
        self.epoch = time.time_ns()
        self.core = RaftCore(_core_config(config), random.Random(os.urandom(16)), self._initial_state())
        self.durable_commit = min(self.core.log.committed, self.core.log.stable)
        self._stop = False
        self._tick_s = config.raft.tick_ms / 1000.0
        self._max_ticks = 2 * config.raft.election_ticks
        self._next_tick = time.monotonic() + self._tick_s
        self._read_timeout_s = config.api.request_timeout_ms / 1000.0
        self._max_reads = config.api.max_in_flight
        self._reads: dict[int, _PendingRead] = {}
        self._fetches: list[_ParkedFetch] = []
        self._fetch_served = False  # a parked fetch carried the newest commit out this turn
        self._proposed: list[tuple[bytes, WireMessage]] = []  # replies sent after the appends
        self._read_ids = itertools.count(1)
        self._seq = 0
        self._published: tuple[int, int, int] = (-1, -1, -1)
        self._last_notice = 0.0
        self._leader = NONE
        self._term = self.core.term
        self._log_full = ""  # why the log cannot be written ("disk full: ..."); "" when fine
        self._log_full_code = "disk_full"
        self._frozen_until = 0.0  # sitting out after a failed log write, until then
        self._store_full = ""  # the store's report that it cannot apply (see FetchEntries)
        self._store_full_at = 0.0
        self._next_transfer = 0.0
        self._transfer_round = 0
        self._vote_floor = self.core.vote_floor
        if self._vote_floor != (0, 0):
            log.warning("vote floor %s: this node neither votes for a log behind it nor stands for "
                        "election until it has fetched the entries it lost", self._vote_floor)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self._open_sockets()
        except BaseException:
            self._ctx.destroy(linger=0)
            raise

    # == lifecycle ===========================================================================
    def _initial_state(self) -> InitialState:
        initial = self.store.load()
        fresh = (initial.hard_state == HardState() and not initial.entries
                 and initial.snapshot == SnapshotMeta())
        if fresh and self.config.bootstrap:
            voters = tuple(sorted(p.id for p in self.config.peers))
            self.store.apply_snapshot(SnapshotMeta(conf=ConfState(voters=voters)))
            initial = self.store.load()
            log.info("bootstrapped a new cluster with voters %s", list(voters))
        # Everything committed before a restart was already offered to the store process.
        return replace(initial, applied=initial.hard_state.commit)

    def _open_sockets(self) -> None:
        config = self.config
        self._inbox = peer_inbox(self._ctx, config.me().raft)
        self._rpc = rpc_server(self._ctx, config.raft_rpc)
        self._pub = publisher(self._ctx, config.raft_pub)
        self.peers = PeerLinks(self._ctx, config.id, {p.id: p.raft for p in config.peers}, self.stats)
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)
        self._poller.register(self._rpc, zmq.POLLIN)
        log.info("node %d serving: raft %s, rpc %s, pub %s; term %d, commit %d, last index %d",
                 config.id, config.me().raft, config.raft_rpc, config.raft_pub, self.core.term,
                 self.durable_commit, self.core.log.last_index())

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        """Close every socket (LINGER=0) and then the log store."""
        self.peers.close()
        self._ctx.destroy(linger=0)
        self.store.close()

    def serve(self) -> None:
        """Run turns until stop() is called. Fatal errors propagate to the caller."""
        while not self._stop:
            self.turn()

    def turn(self) -> None:
        events = dict(self._poller.poll(self._poll_timeout_ms()))
        frozen = self._frozen()
        if events.get(self._inbox):
            if frozen:
                self.stats["peer_dropped_disk_full"] += len(recv_batch(self._inbox, MAX_DRAIN))
            else:
                self._drain_peers()
        if events.get(self._rpc):
            self._drain_rpc()
        now = time.monotonic()
        if self._fetches:  # entries the acknowledgements just committed go out first
            self.durable_commit = min(self.core.log.committed, self.core.log.stable)
            self._serve_parked_fetches(now)
        if not frozen:
            self._tick_due(now)
        self._update_deferral(now)
        self._expire_reads(now)
        self._process_ready()
        if self._proposed:
            self._send_proposed()
        if self._fetches:
            self._serve_parked_fetches(now)
        self._maybe_publish(now)

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        wake = min(self._next_tick, self._last_notice + NOTICE_INTERVAL_S)
        if self._reads:
            wake = min(wake, next(iter(self._reads.values())).deadline)
        for parked in self._fetches:
            wake = min(wake, parked.deadline if parked.ready_at <= now else parked.ready_at)
        return max(0, math.ceil((wake - now) * 1000))

    def _tick_due(self, now: float) -> None:
        ticks = 0
        while now >= self._next_tick:
            if ticks >= self._max_ticks:
                self.stats["ticks_skipped"] += 1
                log.warning("loop fell behind by %.0f ms; skipping ticks", (now - self._next_tick) * 1000)
                self._next_tick = now + self._tick_s
                break
            self.core.tick()
            ticks += 1
            self._next_tick += self._tick_s

    # == peer traffic ========================================================================
    def _drain_peers(self) -> None:
        for frames in recv_batch(self._inbox, MAX_DRAIN):
            msg = self._decode_peer(frames)
            if msg is not None:
                self.stats["peer_received"] += 1
                self.core.step(msg)

    def _decode_peer(self, frames: list[bytes]) -> Message | None:
        if len(frames) < 2:
            self._count_bad("peer_decode_errors", "peer message without a body")
            return None
        try:
            msg = decode(frames[1:])
        except RemoteProtocolError as exc:
            self._count_bad("peer_decode_errors", f"undecodable peer message: {exc}")
            return None
        if not isinstance(msg, Message):
            self._count_bad("peer_decode_errors", f"non-raft message {type(msg).__name__} on the peer inbox")
            return None
        if msg.to != self.config.id or msg.frm in (NONE, self.config.id) or frames[0] != str(msg.frm).encode():
            self._count_bad("peer_misrouted", f"misrouted peer message {msg.frm}->{msg.to} from {frames[0]!r}")
            return None
        return msg

    def _send_all(self, messages: tuple[Message, ...]) -> None:
        if len(messages) > 1:
            merged = coalesce(messages, self.config.raft.max_msg_bytes)
            self.stats["peer_coalesced"] += len(messages) - len(merged)
        else:
            merged = list(messages)
        for msg in merged:
            self.peers.send(msg)

    def _count_bad(self, counter: str, detail: str) -> None:
        self.stats[counter] += 1
        count = self.stats[counter]
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th...: visible but never a flood
            log.warning("dropped %s (%s #%d)", detail, counter, count)

    # == the Ready cycle =====================================================================
    def _process_ready(self) -> None:
        core, store = self.core, self.store
        while core.has_ready():
            rd = core.ready()
            if rd.soft_state is not None:
                self._on_soft_state(rd.soft_state)
            self._send_all(rd.messages)
            if self._proposed:  # after the AppendEntries, before the fsync
                self._send_proposed()
            try:
                if rd.snapshot is not None:
                    self._install_snapshot(rd.snapshot)
                if rd.hard_state is not None or rd.entries:
                    store.save(rd.hard_state, rd.entries, sync=rd.must_sync)
                    self.stats["syncs" if rd.must_sync else "writes"] += 1
            except OSError as exc:
                # Nothing of this Ready is durable: its persist-dependent messages are never
                # sent and advance() is never called; the core is rebuilt from the disk.
                self._persist_failed(exc)
                return
            if self._log_full and (rd.entries or rd.hard_state is not None):
                log.warning("the log persists again (after: %s); taking part again", self._log_full)
                self._log_full = ""
            if rd.hard_state is not None and rd.hard_state.term != self._term:
                self._term = rd.hard_state.term
                log.info("term %d (vote %d)", rd.hard_state.term, rd.hard_state.vote)
            if rd.hard_state is not None and rd.hard_state.vote_floor() != self._vote_floor:
                self._vote_floor = rd.hard_state.vote_floor()
                log.warning("the log reached the vote floor (last index %d): voting and campaigning "
                            "normally again", core.log.last_index())
            self._send_all(rd.messages_after_persist)
            self._answer_reads(rd.read_states)
            core.advance(rd)
            self.durable_commit = min(core.log.committed, core.log.stable)

    # == a log that cannot be written (disk full) =============================================
    def _frozen(self) -> bool:
        return bool(self._log_full) and time.monotonic() < self._frozen_until

    def _persist_failed(self, exc: OSError) -> None:
        """Recover from a failed log write in place, as a restart would, instead of exiting.

        The core believed nothing of the failed Ready durable yet (advance() was not called),
        but earlier unsynced bytes and a partial batch may sit in the files: the store cuts
        everything after its last successful sync, then the core is rebuilt from what the disk
        really holds (crash recovery, which is proven safe). The node then sits out for
        PERSIST_RETRY_S: a follower that cannot persist must not acknowledge, and retrying on
        every AppendEntries would reload the log many times a second."""
        full = exc.errno in fsutil.NO_SPACE
        self._log_full = f"{'disk full' if full else 'disk error'}: {self.config.log_dir}: {exc.strerror or exc}"
        self._log_full_code = "disk_full" if full else "unavailable"
        self.stats["persist_failures"] += 1
        log.error("cannot write the log (%s): dropping what is not durable, reloading from disk, "
                  "refusing writes; retrying in %.1f s", self._log_full, PERSIST_RETRY_S)
        self.store.reopen()  # an OSError here is fatal: the store stays failed
        self.core = RaftCore(_core_config(self.config), random.Random(os.urandom(16)), self._initial_state())
        self.core.defer_campaign(True)
        self.durable_commit = min(self.core.log.committed, self.core.log.stable)
        self._frozen_until = time.monotonic() + PERSIST_RETRY_S
        self._next_tick = self._frozen_until + self._tick_s
        self._fail_reads(self._log_full_code, self._log_full)
        if self._leader != NONE:
            log.info("role follower, leader 0, term %d (rebuilt from disk)", self.core.term)
            self._leader = NONE
        self._term = self.core.term

    def _update_deferral(self, now: float) -> None:
        """Keep the core's campaign deferral in step with the disk, and move leadership away
        from a node that cannot take writes."""
        if self._store_full and now - self._store_full_at > STORE_FULL_TTL_S:
            log.warning("no word from the store for %.0f s: forgetting its report (%s)",
                        STORE_FULL_TTL_S, self._store_full)
            self._store_full = ""
        deferred = bool(self._log_full or self._store_full)
        core = self.core
        if deferred != core.campaign_deferred:
            core.defer_campaign(deferred)
            log.info("campaigning %s", "deferred: this node cannot take writes" if deferred else "normal again")
        if not deferred or core.role != Role.LEADER or core.lead_transferee != NONE or now < self._next_transfer:
            return
        self._next_transfer = now + TRANSFER_RETRY_S
        candidates = sorted((-p.match, node) for node, p in core.progress.items()
                            if node != core.id and node in core.conf.voters and p.recent_active)
        if candidates:
            target = candidates[self._transfer_round % len(candidates)][1]
            self._transfer_round += 1
            log.info("handing leadership to node %d: this node cannot take writes", target)
            core.transfer_leader(target)

    def _disk_refusal(self, request_id: int) -> Error | None:
        """The reply to a write this node must refuse because a disk is full, else None.

        A log that cannot be written refuses everything. A store that cannot apply refuses only
        on the leader (which is handing leadership over): a follower answers not_leader as
        usual, and its API forwards the write to a leader that can take it."""
        if self._log_full:
            self.stats["proposals_disk_full"] += 1
            return Error(request_id, self._log_full_code,
                         f"{self._log_full}; node {self.config.id} takes no writes until it can persist again")
        if self._store_full and self.core.role == Role.LEADER:
            self.stats["proposals_disk_full"] += 1
            return Error(request_id, "disk_full",
                         f"{self._store_full}; node {self.config.id} takes no writes until its store can apply")
        return None

    def _on_soft_state(self, soft: SoftState) -> None:
        if soft.leader != self._leader:
            self._fail_reads("leadership_lost", f"leader changed from {self._leader} to {soft.leader}")
            self._leader = soft.leader
        log.info("role %s, leader %d, term %d", soft.role.name.lower(), soft.leader, self.core.term)

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        # Shipping snapshot data is not implemented yet; the log store still records the new
        # log start so that the core and the disk agree.
        log.warning("snapshot at index %d term %d installed without data", meta.index, meta.term)
        self.store.apply_snapshot(meta)

    # == local RPC ===========================================================================
    def _drain_rpc(self) -> None:
        for frames in recv_batch(self._rpc, MAX_DRAIN):
            if len(frames) < 2:
                self._count_bad("rpc_decode_errors", "request without a body")
                continue
            identity = frames[0]
            try:
                request = decode(frames[1:])
            except RemoteProtocolError as exc:
                self._count_bad("rpc_decode_errors", f"undecodable request: {exc}")
                continue
            self.stats["rpc_received"] += 1
            handler = _RPC_HANDLERS.get(type(request)) if isinstance(request, WireMessage) else None
            if handler is None:
                self._count_bad("rpc_bad_requests", f"unexpected {type(request).__name__} on the RPC socket")
                request_id = getattr(request, "id", None)
                if isinstance(request_id, int):
                    self._reply(identity, Error(request_id, "bad_request", "not a raft request"))
                continue
            reply = handler(self, identity, request)
            if isinstance(reply, (Proposed, ProposedBatch)):
                # Held until this turn's AppendEntries are out: replication goes first.
                self._proposed.append((identity, reply))
            elif reply is not None:
                self._reply(identity, reply)

    def _send_proposed(self) -> None:
        replies, self._proposed = self._proposed, []
        for identity, reply in replies:
            self._reply(identity, reply)

    def _reply(self, identity: bytes, reply: WireMessage) -> None:
        if not send_nowait(self._rpc, [identity, *encode(reply)]):
            self.stats["rpc_reply_dropped"] += 1

    def _not_leader(self, request_id: int) -> Error:
        return Error(request_id, "not_leader", f"node {self.config.id} is not the leader",
                     leader=self.core.leader)

    def _on_propose(self, identity: bytes, req: Propose) -> WireMessage:
        core = self.core
        refusal = self._disk_refusal(req.id)
        if refusal is not None:
            return refusal
        if core.role != Role.LEADER:
            return self._not_leader(req.id)
        if core.log.last_index() - core.log.committed >= self.config.raft.max_pending_proposals:
            self.stats["proposals_busy"] += 1
            return Error(req.id, "busy", "too many uncommitted proposals", leader=core.leader)
        try:
            index = core.propose(req.data)
        except ProposalDropped as exc:
            return Error(req.id, "unavailable", str(exc), leader=core.leader)
        self.stats["proposals"] += 1
        return Proposed(req.id, index, core.term)

    def _on_propose_batch(self, identity: bytes, req: ProposeBatch) -> WireMessage:
        """Each payload exactly as a Propose of its own, all appended in this turn."""
        results: list[list[Any]] = []
        for data in req.payloads:
            reply = self._on_propose(identity, Propose(req.id, data))
            if isinstance(reply, Proposed):
                results.append([reply.index, reply.term])
            else:
                assert isinstance(reply, Error)
                results.append([reply.code, reply.message, reply.leader])
        return ProposedBatch(req.id, results)

    def _on_read_index(self, identity: bytes, req: ReadIndex) -> WireMessage | None:
        if self._frozen():
            return Error(req.id, self._log_full_code, f"{self._log_full}; node {self.config.id} is sitting out")
        if len(self._reads) >= self._max_reads:
            return Error(req.id, "busy", "too many pending reads", leader=self.core.leader)
        read_id = next(self._read_ids)
        if not self.core.read_index(read_id):
            return Error(req.id, "unavailable", "no known leader")
        self._reads[read_id] = _PendingRead(identity, req.id, time.monotonic() + self._read_timeout_s)
        return None

    def _answer_reads(self, states: tuple[ReadState, ...]) -> None:
        for state in states:
            pending = self._reads.pop(state.request_id, None)
            if pending is not None:
                self._reply(pending.identity, ReadIndexReply(pending.request_id, state.index))

    def _expire_reads(self, now: float) -> None:
        while self._reads:
            read_id, pending = next(iter(self._reads.items()))
            if pending.deadline > now:
                return
            del self._reads[read_id]
            self.stats["reads_timed_out"] += 1
            self._reply(pending.identity, Error(pending.request_id, "timeout", "read index timed out",
                                                leader=self.core.leader))

    def _fail_reads(self, code: str, message: str) -> None:
        reads, self._reads = self._reads, {}
        for pending in reads.values():
            self._reply(pending.identity, Error(pending.request_id, code, message, leader=self.core.leader))

    def _on_status(self, identity: bytes, req: StatusRequest) -> WireMessage:
        return StatusReply(req.id, self.status())

    def status(self) -> dict[str, Any]:
        core = self.core
        status: dict[str, Any] = {
            "node_id": self.config.id, "role": core.role.name.lower(), "term": core.term,
            "vote": core.vote, "leader": core.leader, "commit": self.durable_commit,
            "raft_commit": core.log.committed, "applied": core.log.applied,
            "first_index": core.log.first_index(), "last_index": core.log.last_index(),
            "voters": list(core.conf.voters), "learners": list(core.conf.learners),
            "epoch": self.epoch, "seq": self._seq, "pending_reads": len(self._reads),
            "disk_full": self._log_full or self._store_full, "stats": dict(self.stats),
            "vote_floor": list(core.vote_floor),
        }
        if core.role == Role.LEADER:
            status["progress"] = {
                str(node): {"match": p.match, "next": p.next, "state": p.state.name.lower()}
                for node, p in core.progress.items() if node != core.id}
        return status

    def _on_fetch(self, identity: bytes, req: FetchEntries) -> WireMessage | None:
        if req.disk_full != self._store_full:
            if req.disk_full:
                log.warning("the store cannot apply: %s", req.disk_full)
            else:
                log.warning("the store applies again")
            self._store_full = req.disk_full
        self._store_full_at = time.monotonic()
        hi = self.durable_commit
        if req.start < 1:
            return Error(req.id, "bad_request", "start must be at least 1")
        first = self.store.first_index()
        if req.start < first:
            return Error(req.id, "compacted", f"entries before {first} are compacted")
        if self._fetches:  # a newer fetch from the same requester replaces its held one
            self._fetches = [f for f in self._fetches if f.identity != identity]
        if req.wait_ms > 0 and (req.start > hi or req.linger_ms > 0):
            # Long poll: answered by _serve_parked_fetches as soon as the commit reaches
            # req.start (and the linger is over), which saves the store the notice -> fetch
            # round trip.
            if len(self._fetches) < MAX_PARKED_FETCHES:
                now = time.monotonic()
                wait_s = min(req.wait_ms / 1000.0, MAX_FETCH_WAIT_S)
                linger_s = min(req.linger_ms / 1000.0, wait_s)
                self._fetches.append(_ParkedFetch(identity, req, now + linger_s, now + wait_s))
                self.stats["fetches_parked"] += 1
                return None
        if req.start > hi:
            return EntriesReply(req.id, hi, [])
        try:
            entries = self._read_entries(req.start, hi, min(max(req.max_bytes, 1), self.config.raft.fetch_max_bytes))
        except LogCompactedError as exc:
            return Error(req.id, "compacted", str(exc))
        self.stats["fetches"] += 1
        return EntriesReply(req.id, hi, entries)

    def _read_entries(self, lo: int, hi: int, budget: int) -> list[Entry]:
        """Entries lo..hi (inclusive) up to about `budget` bytes; at least one."""
        out: list[Entry] = []
        size = 0
        while lo <= hi:
            for entry in self.store.entries(lo, min(hi + 1, lo + FETCH_CHUNK)):
                size += entry.size()
                if out and size > budget:
                    return out
                out.append(entry)
            lo = out[-1].index + 1
        return out

    def _on_conf_change(self, identity: bytes, req: ConfChangeRequest) -> WireMessage:
        kind = _CONF_OPS.get(req.op)
        if kind is None:
            return Error(req.id, "bad_request", f"unknown membership op {req.op!r}")
        if kind != ConfChangeKind.REMOVE and self.config.peer(req.node_id) is None:
            return Error(req.id, "bad_request", f"node {req.node_id} has no address in the configuration")
        refusal = self._disk_refusal(req.id)
        if refusal is not None:
            return refusal
        if self.core.role != Role.LEADER:
            return self._not_leader(req.id)
        try:
            index = self.core.propose_conf_change(ConfChange(kind, req.node_id))
        except ProposalDropped as exc:
            return Error(req.id, "rejected", str(exc), leader=self.core.leader)
        log.info("proposed %s of node %d at index %d", req.op, req.node_id, index)
        return Ok(req.id, {"index": index, "term": self.core.term})

    def _on_transfer(self, identity: bytes, req: TransferLeader) -> WireMessage:
        if self.core.role != Role.LEADER:
            return self._not_leader(req.id)
        if req.node_id not in self.core.conf.voters:
            return Error(req.id, "bad_request", f"node {req.node_id} is not a voter")
        self.core.transfer_leader(req.node_id)
        log.info("leadership transfer to node %d requested", req.node_id)
        return Ok(req.id, {"term": self.core.term})

    def _serve_parked_fetches(self, now: float) -> None:
        """Answer the parked long-poll fetches that the commit has reached, and the expired."""
        hi = self.durable_commit
        keep: list[_ParkedFetch] = []
        for parked in self._fetches:
            if parked.request.start <= hi and parked.ready_at <= now:
                reply = self._on_fetch(parked.identity, replace(parked.request, wait_ms=0))
                if reply is not None:
                    self._reply(parked.identity, reply)
                self._fetch_served = True
            elif parked.deadline <= now:
                self._reply(parked.identity, EntriesReply(parked.request.id, hi, []))
            else:
                keep.append(parked)
        self._fetches = keep

    # == notices =============================================================================
    def _maybe_publish(self, now: float) -> None:
        key = (self.durable_commit, self.core.term, self.core.leader)
        served, self._fetch_served = self._fetch_served, False
        if now - self._last_notice < NOTICE_INTERVAL_S:
            if key == self._published:
                return
            if (served or self._fetches) and key[1:] == self._published[1:]:
                # Only the commit moved and a long-poll fetch carried it to the store, or holds
                # it for a store lingering on purpose: the notice would only wake the
                # subscribers; the heartbeat still announces it.
                self._published = key
                self.stats["notices_skipped"] += 1
                return
        self._seq += 1
        notice = CommitNotice(self.epoch, self._seq, key[0], key[1], key[2])
        if not send_nowait(self._pub, encode(notice)):
            self.stats["notices_dropped"] += 1
        self._published = key
        self._last_notice = now


_RPC_HANDLERS: dict[type[WireMessage], Callable[[RaftProcess, bytes, Any], WireMessage | None]] = {
    Propose: RaftProcess._on_propose,
    ProposeBatch: RaftProcess._on_propose_batch,
    ReadIndex: RaftProcess._on_read_index,
    StatusRequest: RaftProcess._on_status,
    FetchEntries: RaftProcess._on_fetch,
    ConfChangeRequest: RaftProcess._on_conf_change,
    TransferLeader: RaftProcess._on_transfer,
}


def _core_config(config: NodeConfig) -> RaftConfig:
    settings = config.raft
    return RaftConfig(node_id=config.id, election_tick=settings.election_ticks,
                      heartbeat_tick=settings.heartbeat_ticks, max_inflight=settings.max_inflight,
                      max_msg_bytes=settings.max_msg_bytes, pre_vote=True, check_quorum=True)


# == entry points ============================================================================
def run(config: NodeConfig) -> int:
    """Run the raft process of `config`'s node until SIGTERM/SIGINT; returns the exit code
    (0 after a clean stop, non-zero after a fatal error so that the supervisor restarts it)."""
    _setup_logging(config.id)
    try:
        finish_interrupted(config.log_dir)
    except (OSError, SalvageRefused) as exc:
        log.critical("fatal: cannot start: %s: %s", type(exc).__name__, exc)
        return EXIT_FATAL
    store = FileLogStore(config.log_dir, segment_size=config.raft.segment_bytes)
    try:
        try:
            proc = RaftProcess(config, store)
        except LogCorruptError as exc:
            _close_quietly(store)
            store = _salvage_or_raise(config, exc)
            proc = RaftProcess(config, store)
    except zmq.ZMQError as exc:
        log.critical("fatal: cannot bind a socket: %s", exc)
        _close_quietly(store)
        return EXIT_FATAL
    except (LogStoreError, LogInvariantError, ConfigError) as exc:
        log.critical("fatal: cannot start: %s: %s", type(exc).__name__, exc)
        _close_quietly(store)
        return EXIT_FATAL
    restore = _install_signal_handlers(proc.stop)
    code = EXIT_FATAL
    try:
        profiled(proc.serve, config.id, "raft")
        code = EXIT_OK
        log.info("stopping on signal: term %d, commit %d", proc.core.term, proc.durable_commit)
    except (LogStoreError, LogInvariantError) as exc:
        log.critical("fatal: %s: %s", type(exc).__name__, exc)
    except Exception:
        log.exception("fatal: unexpected error")
    finally:
        restore()
        try:
            proc.close()
        except Exception as exc:
            log.error("error while closing: %s: %s", type(exc).__name__, exc)
            code = code or EXIT_FATAL
    return code


def _salvage_or_raise(config: NodeConfig, damage: LogCorruptError) -> FileLogStore:
    """The log has damage in synced data: salvage it when that is safe (see salvage.py), and
    return a store on the new log; otherwise re-raise `damage` (the process then exits
    non-zero, as it always did)."""
    log.critical("the raft log has damage in synced data: %s", damage)
    try:
        salvaged = salvage(config.log_dir, damage)
        voters = RaftLog(salvaged.snapshot, salvaged.entries, 0, 0).latest_conf().voters
        if voters == (config.id,):
            raise SalvageRefused("this node is the cluster's only voter: no peer holds what was lost")
        aside = quarantine(config.log_dir, salvaged, segment_size=config.raft.segment_bytes)
    except (SalvageRefused, OSError) as exc:
        log.critical("cannot recover from the damage automatically (%s): refusing to start; an operator "
                     "must replace this node's data (move %s aside and let it rejoin as a new, empty "
                     "member, or restore it)", exc, config.log_dir)
        raise damage from None
    log.critical("salvaged the damaged raft log: %s; the damaged log is kept at %s (never deleted "
                 "automatically); starting from the salvaged log, the rest comes from the leader",
                 salvaged.describe(), aside)
    return FileLogStore(config.log_dir, segment_size=config.raft.segment_bytes)


def profiled(serve: Callable[[], None], node_id: int, name: str) -> None:
    """Run `serve`, under cProfile when ZRAFT_PROFILE names a folder (a performance aid: the
    stats go to FOLDER/NAME-NODE-PID.prof when the process stops cleanly)."""
    folder = os.environ.get("ZRAFT_PROFILE")
    if not folder:
        serve()
        return
    profile = cProfile.Profile()
    try:
        profile.runcall(serve)
    finally:
        profile.dump_stats(os.path.join(folder, f"{name}-{node_id}-{os.getpid()}.prof"))


def _close_quietly(store: LogStore) -> None:
    try:
        store.close()
    except Exception as exc:
        log.error("error while closing the log store: %s", exc)


def _setup_logging(node_id: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s raft[{node_id}] %(message)s")


def _install_signal_handlers(stop: Callable[[], None]) -> Callable[[], None]:
    """SIGTERM and SIGINT call `stop`; returns a function restoring the previous handlers.
    Outside the main thread (where signals cannot be handled) this does nothing."""
    def handler(signum: int, frame: object) -> None:
        stop()

    previous: dict[int, Any] = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:
        pass

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return restore


def main(argv: list[str] | None = None) -> int:
    """`python -m zraft.procs.raft_proc CONFIG.toml`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m zraft.procs.raft_proc CONFIG.toml", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load(args[0])
    except ConfigError as exc:
        print(f"zraft raft: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
