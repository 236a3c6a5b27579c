"""The raft process of a node: the pure RaftCore driven by one synchronous poll loop.

It owns the core, the durable log store and every Raft socket:
- peer inbox: ROUTER bound to this node's `raft` address; one DEALER per other peer;
- local RPC: ROUTER bound to `raft_rpc` (Propose, ProposeBatch, ReadIndex, StatusRequest,
  FetchEntries, ConfChangeRequest, TransferLeader);
- PUB bound to `raft_pub`: CommitNotice hints on every change and every 200 ms.

This module only wires; the logic lives in named parts, each handed what it needs:
`EntryServer` (the store's pull, with long polls), `DiskHealth` (a failing disk: freeze,
refuse, defer campaigns, hand leadership away), `ReadIndexWaits`, `Proposals`,
`CommitAnnouncer`, and the shared skeleton in `shell.py`. One turn of the loop (DESIGN.md):
poll until the next deadline; drain the peer inbox and the RPC socket (bounded); tick as
often as due; steer by the disks; expire reads; then run the Ready cycle until the core has
nothing left, keeping its contract to the letter: hand `committed_entries` to the EntryServer
(they are durable here already, so a store waiting in a long poll gets them at once), send
`messages`, persist (one write, one fsync per Ready), send `messages_after_persist`, answer
reads, `advance`.

Failures: bad input is counted and dropped; a write to the log that fails with an OSError
rebuilds the core from the disk as a restart would and the node sits out (DiskHealth); a
broken invariant (log corruption, LogInvariantError) ends the process non-zero so that the
supervisor restarts it. Damage found in synced data at start is salvaged when that is safe
(zraft/logstore/salvage.py); otherwise the process refuses to start.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import zmq

from zraft.config import ConfigError, NodeConfig, load
from zraft.logstore import LogCorruptError, LogStore, LogStoreError
from zraft.logstore.salvage import SalvageRefused
from zraft.procs.disk_health import DiskHealth
from zraft.procs.entry_server import EntryServer
from zraft.procs.log_open import close_quietly, open_log, salvage_or_raise
from zraft.procs.notices import CommitAnnouncer, NoticePublisher
from zraft.procs.peers_file import recover_if_asked
from zraft.procs.proposals import Proposals
from zraft.procs.read_waits import ReadIndexWaits
from zraft.procs.removal import Removal
from zraft.procs.role_watch import RoleWatch, Roles
from zraft.procs.snapshots import Compactor, ImageTransfer, Snapshots
from zraft.procs.shell import MAX_DRAIN, Counters, ExitCode, RpcServer, Ticker, run_shell, setup_logging
from zraft.raft import (
    NONE,
    ConfState,
    HardState,
    LogInvariantError,
    Message,
    MsgType,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
    SnapshotMeta,
)
from zraft.raft.validate import problem
from zraft.transport import publisher, rpc_server
from zraft.transport.sockets import native_max_frame_bytes, peer_max_frame_bytes, peer_max_header_bytes
from zraft.transport.peers import PeerMessage, PeerTransport
from zraft.wire.messages import (
    CompactLog,
    Compacted,
    ConfChangeRequest,
    FetchEntries,
    MemberRemoved,
    PeerProgress,
    Propose,
    ProposeBatch,
    Proposed,
    ProposedBatch,
    RaftStatus,
    ReadIndex,
    SnapshotChunk,
    SnapshotPull,
    StatusRequest,
    TransferLeader,
    WireMessage,
)
from zraft.wire.messages import ErrorCode

log = logging.getLogger("zraft.raft_proc")

NOTICE_INTERVAL_S = 0.2
"""A CommitNotice goes out at least this often, as a heartbeat, even when nothing changed."""


class RaftProcess:
    """The raft shell of one node. Owned by the thread that runs `serve()`; `stop()` may be
    called from a signal handler (it only sets a flag, seen at the start of the next turn)."""

    def __init__(self, config: NodeConfig, store: LogStore) -> None:
        """Load the log (bootstrapping an empty one if configured), build the core and bind
        every socket. Raises zmq.ZMQError on a bind failure, LogStoreError on a bad log."""
        self.config = config
        self.store = store
        self.stats = Counters(log)
        self.core = self._build_core()
        self._stop = False
        self._ticker = Ticker(config.raft.tick_ms / 1000.0, 2 * config.raft.election_ticks, time.monotonic(),
                              self.stats, log)
        self.roles = Roles(RoleWatch(self.core),
                           Removal(lambda notice: self.peers.links.send(notice), self.stats))
        if self.core.recovering:
            log.info("blank start: this node neither votes nor stands for election until every other "
                        "voter has told it its term and last log id")
        elif self.core.vote_floor != (0, 0):
            log.warning("vote floor %s: this node neither votes for a log behind it nor stands for "
                        "election until it has fetched the entries it lost", self.core.vote_floor)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self._wire(config, ctx)
        except BaseException:
            ctx.destroy(linger=0)
            raise

    def _wire(self, config: NodeConfig, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Every socket comes from `ctx`, which the process owns through them (see close)."""
        stats = self.stats
        self.peers = PeerTransport(ctx, config.id, {p.id: p.raft for p in config.peers}, stats,
                                   peer_max_frame_bytes(config.raft, config.api),
                                   peer_max_header_bytes(config.raft))
        self.disk = DiskHealth(config.id, config.log_dir, stats)
        proposals = Proposals(config.id, frozenset(p.id for p in config.peers),
                              config.raft.max_pending_proposals, native_max_frame_bytes(config.api),
                              self.disk, stats)
        self.rpc = RpcServer(rpc_server(ctx, config.raft_rpc), {
            Propose: lambda _, req: proposals.propose(self.core, req),
            ProposeBatch: lambda _, req: proposals.propose_batch(self.core, req),
            ConfChangeRequest: lambda _, req: proposals.change_membership(self.core, req),
            TransferLeader: lambda _, req: proposals.transfer(self.core, req),
            ReadIndex: self._on_read_index,
            FetchEntries: self._on_fetch,
            StatusRequest: lambda _, req: self.status(req.id),
            CompactLog: lambda _, req: self._on_compact(req),
        }, stats, service="raft", held=(Proposed, ProposedBatch))
        self.entries = EntryServer(self.store, self.rpc.reply, config.raft.fetch_max_bytes,
                                   self.core.log.applied, stats)
        self.reads = ReadIndexWaits(self.rpc.reply, config.api.max_in_flight,
                                    config.api.request_timeout_ms / 1000.0, stats)
        self.notices = CommitAnnouncer(NoticePublisher(publisher(ctx, config.raft_pub),
                                                       NOTICE_INTERVAL_S, stats), stats)
        self.snapshots = Snapshots(Compactor(config.raft, stats),
                                   ImageTransfer(ctx, config.id, config.store_rpc, config.raft.max_msg_bytes,
                                                 self.peers.links.send, stats,
                                                 window_bytes=config.raft.max_inflight_bytes))
        self._poller = zmq.Poller()
        self._poller.register(self.peers.inbox, zmq.POLLIN)
        self._poller.register(self.rpc.sock, zmq.POLLIN)
        self._poller.register(self.snapshots.transfer.sock, zmq.POLLIN)
        log.info("node %d serving: raft %s, rpc %s, pub %s; term %d, commit %d, last index %d",
                 config.id, config.me().raft, config.raft_rpc, config.raft_pub, self.core.term,
                 self.entries.commit, self.core.log.last_index())

    # == lifecycle ===========================================================================
    def _build_core(self) -> RaftCore:
        """A core on what the log store holds, as at every start. Everything committed and
        on disk counts as handed out already: the store fetches by its own applied index."""
        initial = self.store.load()
        fresh = (initial.hard_state == HardState() and not initial.entries
                 and initial.snapshot == SnapshotMeta())
        if fresh and self.config.bootstrap:
            voters = tuple(sorted(p.id for p in self.config.peers))
            self.store.apply_snapshot(SnapshotMeta(conf=ConfState(voters=voters)))
            initial = self.store.load()
            log.info("bootstrapped a new cluster with voters %s", list(voters))
        durable = initial.entries[-1].index if initial.entries else initial.snapshot.index
        initial = replace(initial, applied=min(initial.hard_state.commit, durable))
        return RaftCore(_core_config(self.config), random.Random(os.urandom(16)), initial)

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        """Close every socket (LINGER=0) and then the log store."""
        context = self.rpc.sock.context  # the one _wire made every socket from
        self.snapshots.transfer.close()
        self.peers.close()
        context.destroy(linger=0)
        self.store.close()

    def serve(self) -> None:
        """Run turns until stop() is called, then hand leadership over if this node leads.
        Fatal errors propagate to the caller."""
        while not self._stop:
            self.turn()
        self._hand_off_before_exit()

    def _hand_off_before_exit(self) -> None:
        """A leader that is told to stop hands leadership to the most up-to-date voter first
        and keeps serving until it is taken (at most two election timeouts), as rqlite's
        -raft-shutdown-stepdown: its writes in flight then commit under the new leader, and
        writers see a leader change within a heartbeat instead of an election timeout. It
        serves on until what it had appended is committed, so that its store can still answer
        the writers waiting on this node."""
        target = self.core.hand_off_leadership()
        if target == NONE:
            return
        settings = self.config.raft
        deadline = time.monotonic() + 2 * settings.election_ticks * settings.tick_ms / 1000
        last = self.core.log.last_index()  # once committed, the store can answer their writers
        log.info("stopping: handing leadership to node %d first", target)
        while (self.core.role == Role.LEADER or self.entries.commit < last) and time.monotonic() < deadline:
            self.turn()
        if self.core.role == Role.LEADER:
            log.info("stopping: leadership was not taken in time")
        else:
            log.info("stopping: %s", f"node {self.core.leader} leads now" if self.core.leader != NONE
                     else "this node stepped down; no leader is known yet")

    def turn(self) -> None:
        events = dict(self._poller.poll(self._poll_timeout_ms(time.monotonic())))
        now = time.monotonic()
        frozen = self.disk.frozen(now)
        if events.get(self.peers.inbox):
            if frozen:
                self.stats["peer_dropped_disk_full"] += self.peers.discard(MAX_DRAIN)
            else:
                for msg in self.peers.receive(MAX_DRAIN, self.stats.bad):
                    self.stats["peer_received"] += 1
                    self._receive(msg, now)
        if events.get(self.rpc.sock):
            self.rpc.drain()
        if events.get(self.snapshots.transfer.sock):
            released = self.snapshots.transfer.on_store_replies(now)
            if released is not None:
                self._step(released)
        if not frozen:
            ticks = self._ticker.due(now)
            for _ in range(ticks if self.roles.removal.may_campaign else 0):
                self.core.tick()
            if ticks:
                self.peers.links.drain_stray()
                self.snapshots.transfer.tick(now)
                self._maybe_compact(now)
        self.disk.steer(self.core, now)
        self.reads.expire(now, self.core.leader)
        self._process_ready(now)
        self.rpc.release_held()
        self.entries.serve_parked(now)
        self.notices.announce(self.entries.commit, self.core.term, self.core.leader,
                              self.entries.carried_commit(), self.entries.holding, now)

    def _receive(self, msg: PeerMessage, now: float) -> None:
        if isinstance(msg, SnapshotPull):
            self.snapshots.transfer.serve(msg, now)
        elif isinstance(msg, SnapshotChunk):
            self.snapshots.transfer.on_chunk(msg, now)
        elif isinstance(msg, MemberRemoved):
            self.roles.removal.on_notice(msg, self.core)
        else:
            self.roles.removal.on_raft(msg, self.core, now)
            if not (msg.type == MsgType.SNAP and msg.term >= self.core.term and problem(msg, self.config.id) is None
                    and self.snapshots.transfer.hold(msg, now)):
                self._step(msg)  # a SNAP is held until the store has the image (snapshots.ImageTransfer)

    def _step(self, msg: Message) -> None:
        refused = self.core.refused
        self.core.step(msg)
        if self.core.refused != refused:  # impossible input: dropped by the core
            self.stats.bad("peer_refused", f"a message from node {msg.frm}: {self.core.last_refusal}")

    def _maybe_compact(self, now: float) -> None:
        try:
            self.snapshots.compactor.maybe_compact(self.core, self.store, now)
        except OSError as exc:
            self._persist_failed(exc, now)

    def _on_compact(self, req: CompactLog) -> Compacted:
        """POST /snapshot: compact as far as the store's durable index allows, keeping
        `req.trailing` entries (the configured margin when negative)."""
        now = time.monotonic()
        compactor = self.snapshots.compactor
        compactor.durable = max(compactor.durable, min(req.durable, self.snapshots.transfer.store_applied))
        point = compactor.point(self.core, None if req.trailing < 0 else req.trailing)
        try:
            meta = compactor.compact(self.core, self.store, point, now)
        except OSError as exc:
            self._persist_failed(exc, now)
            meta = None
        return Compacted(req.id, self.core.log.snapshot.index, meta is not None)

    def _poll_timeout_ms(self, now: float) -> int:
        wake = min(self._ticker.next_at, self.notices.publisher.next_heartbeat(), self.reads.next_deadline(),
                   self.entries.next_wake(now))
        return math.ceil(max(wake - now, 0.0) * 1000)

    # == the Ready cycle =====================================================================
    def _process_ready(self, now: float) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            changed = self.roles.watch.observe(rd, core)
            if changed is not None:
                self.reads.fail_all(ErrorCode.LEADERSHIP_LOST, f"leader changed from {changed[0]} to {changed[1]}",
                                    changed[1])
            if rd.committed_entries:  # durable here and committed: a waiting store has them first
                self.entries.commit_to(rd.committed_entries[-1].index, now)
            self.peers.send(rd.messages, self.config.raft.max_msg_bytes)
            self.rpc.release_held()  # after the AppendEntries, before the fsync
            try:
                self._persist(rd)
            except OSError as exc:
                # Nothing of this Ready is durable: its persist-dependent messages are never
                # sent and advance() is never called; the core is rebuilt from the disk.
                self._persist_failed(exc, now)
                return
            self.peers.send(rd.messages_after_persist, self.config.raft.max_msg_bytes)
            self.reads.answer(rd.read_states)
            core.advance(rd)

    def _persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            # The store already holds an image at or past it (ImageTransfer held the SNAP
            # until then): the log starts after it now.
            log.info("log restored at snapshot index %d term %d", rd.snapshot.index, rd.snapshot.term)
            self.store.apply_snapshot(rd.snapshot)
        if rd.hard_state is not None or rd.entries:
            self.store.save(rd.hard_state, rd.entries, sync=rd.must_sync)
            self.stats["syncs" if rd.must_sync else "writes"] += 1
            self.disk.log_written()

    def _persist_failed(self, exc: OSError, now: float) -> None:
        """Recover from a failed log write in place, as a restart would, instead of exiting.

        The core believed nothing of the failed Ready durable yet (advance() was not called),
        but earlier unsynced bytes and a partial batch may sit in the files: the store cuts
        everything after its last successful sync, then the core is rebuilt from what the disk
        really holds (crash recovery, which is proven safe)."""
        frozen_until = self.disk.log_failed(exc, now)
        self.store.reopen()  # an OSError here is fatal: the store stays failed
        self.core = self._build_core()
        self.core.defer_campaign(True)
        self.entries.reset(self.store, self.core.log.applied)
        self._ticker.pause_until(frozen_until)
        code, message = self.disk.failure()
        self.reads.fail_all(code, message, NONE)
        self.roles.watch.rebuilt(self.core)

    # == requests that are not proposals =====================================================
    def _on_read_index(self, identity: bytes, req: ReadIndex) -> WireMessage | None:
        now = time.monotonic()
        return self.disk.read_refusal(req.id, now) or self.reads.start(identity, req, self.core, now)

    def _on_fetch(self, identity: bytes, req: FetchEntries) -> WireMessage | None:
        now = time.monotonic()
        self.disk.store_reported(req.disk_full, now)
        self.snapshots.transfer.store_applied = req.start - 1
        if req.start <= self.core.log.snapshot.index:
            self.snapshots.transfer.store_behind_log(self.core.leader, self.core.log.snapshot.index, now)
        self.snapshots.compactor.durable = min(req.durable, req.start - 1)
        return self.entries.fetch(identity, req, now)

    def status(self, request_id: int = 0) -> RaftStatus:
        core = self.core
        progress = {}
        if core.role == Role.LEADER:
            progress = {str(node): PeerProgress(p.match, p.next, p.state.name.lower())
                        for node, p in core.progress.items() if node != core.id}
        return RaftStatus(
            request_id, node_id=self.config.id, role=core.role.name.lower(), term=core.term, vote=core.vote,
            leader=core.leader, commit=self.entries.commit, raft_commit=core.log.committed,
            first_index=core.log.first_index(), last_index=core.log.last_index(),
            voters=list(core.conf.voters), learners=list(core.conf.learners),
            epoch=self.notices.publisher.epoch, seq=self.notices.publisher.seq, pending_reads=len(self.reads),
            disk_full=self.disk.reason, vote_floor=list(core.vote_floor), stats=dict(self.stats),
            progress=progress, snapshot_index=core.log.snapshot.index, snapshot_term=core.log.snapshot.term,
            log_bytes=_files_bytes(self.config.log_dir), removed_by=self.roles.removal.removed_by)


def _files_bytes(folder: Path) -> int:
    """Bytes of the regular files directly in `folder` (0 if it cannot be read)."""
    try:
        with os.scandir(folder) as items:
            return sum(item.stat().st_size for item in items if item.is_file(follow_symlinks=False))
    except OSError:
        return 0


def _core_config(config: NodeConfig) -> RaftConfig:
    settings = config.raft
    return RaftConfig(node_id=config.id, election_tick=settings.election_ticks,
                      heartbeat_tick=settings.heartbeat_ticks, max_inflight=settings.max_inflight,
                      max_inflight_bytes=settings.max_inflight_bytes,
                      max_msg_bytes=settings.max_msg_bytes, recover_blank=True, pre_vote=True, check_quorum=True)


# == entry points ============================================================================
def run(config: NodeConfig) -> int:
    """Run the raft process of `config`'s node until SIGTERM/SIGINT; returns the exit code
    (0 after a clean stop, non-zero after a fatal error so that the supervisor restarts it)."""
    setup_logging("raft", config.id)
    try:
        proc = _start(config)
    except zmq.ZMQError as exc:
        log.critical("fatal: cannot bind a socket: %s", exc)
        return ExitCode.FATAL
    except (OSError, SalvageRefused, LogStoreError, LogInvariantError, ConfigError) as exc:
        log.critical("fatal: cannot start: %s: %s", type(exc).__name__, exc)
        return ExitCode.FATAL
    code = run_shell(proc, config.id, "raft", log, fatal=(LogStoreError, LogInvariantError))
    if code == ExitCode.OK:
        log.info("stopping on signal: term %d, commit %d", proc.core.term, proc.entries.commit)
    return code


def _start(config: NodeConfig) -> RaftProcess:
    """The process on its log, salvaged first if it has damage in synced data; the log
    store is closed again when starting fails."""
    store = open_log(config)
    try:
        recover_if_asked(store, config.log_dir, config.id)  # an operator's peers.json, used once
        try:
            return RaftProcess(config, store)
        except LogCorruptError as exc:
            close_quietly(store)
            store = salvage_or_raise(config, exc)
            return RaftProcess(config, store)
    except BaseException:
        close_quietly(store)
        raise


def main(argv: list[str] | None = None) -> int:
    """`python -m zraft.procs.raft_proc CONFIG.toml`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m zraft.procs.raft_proc CONFIG.toml", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        config = load(args[0])
    except ConfigError as exc:
        print(f"zraft raft: bad configuration: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
