"""The store process: applies committed entries to SQLite and serves queries and result waits.

It owns the node's database and three sockets besides its RPC ROUTER (config.store_rpc):
- DEALER -> raft_rpc: FetchEntries, the pull of committed entries by index (FetchClient);
- SUB <- raft_pub: commit notices, which only wake it up: if they are lost (slow joiner, full
  queue, raft restart) the periodic fetch still finds the new entries, so a lost notice
  delays and never stalls or corrupts (the Clone pattern's "recover by request");
- PUB on store_pub: AppliedNotice after each applied batch and as a heartbeat.

Requests: WaitApplied and WaitAppliedBatch (the result of an entry once applied), Query (reads
once an index is applied), StatusRequest (StoreStatus). This module only wires; the logic is
in `EntryApplier` (the database, results, a full disk), `FetchClient` (and its LagClock),
`Waiters` (the parked requests), `PooledReads` (queries on the read pool's threads: the loop
thread never runs one) and the skeleton in `shell.py`. One turn (DESIGN.md): poll until the
next deadline; drain notices, the fetch reply, requests (bounded), finished reads; fetch if
due; expire waits; publish a heartbeat if due.
"""

from __future__ import annotations

import logging
import math
import time

import zmq

from zraft.config import NodeConfig
from zraft.procs.applying import EntryApplier
from zraft.procs.fetch_client import FETCH_POLL_S, FetchClient
from zraft.procs.images import ImageService
from zraft.procs.notices import NoticePublisher
from zraft.procs.shell import MAX_DRAIN, Counters, ExitCode, RpcServer, drain, run_shell
from zraft.procs.waiters import PooledReads, Waiters
from zraft.raft import Entry
from zraft.store.image import Received, install
from zraft.transport.sockets import publisher, rpc_server, subscriber
from zraft.wire.messages import (
    AppliedNotice,
    CommitNotice,
    ExportRead,
    ImageWrite,
    ImageWritten,
    Query,
    StatusRequest,
    StoreStatus,
    Synced,
    SyncDatabase,
    WaitApplied,
    WaitAppliedBatch,
    WireMessage,
)

log = logging.getLogger("zraft.store")

NOTICE_HEARTBEAT_S = 0.2
STATS_SHOWN = ("malformed", "notices", "notice_gaps", "fetches", "fetch_timeouts", "applied_entries")
"""Counters reported from the start, at 0 until something happens."""


class StoreProcess:
    """The store shell of one node. Owned by the thread that runs `serve()`; `stop()` may be
    called from a signal handler (it only sets a flag, seen at the start of the next turn)."""

    def __init__(self, config: NodeConfig, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.config = config
        self.stats = Counters(log)
        self.stats.update({name: 0 for name in STATS_SHOWN})
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.applier = EntryApplier(config.db_path, config.store.results_kept, self.stats,
                                    sync_every=max(1, config.raft.snapshot_threshold // 4))
        self.running = True
        self._awaited = False  # the last applied batch answered a waiting request
        self._sub_empty_at = float("-inf")  # when draining the notice SUB last emptied it
        self._poller = zmq.Poller()
        try:
            self._wire(context)
        except BaseException:
            if hasattr(self, "waiters"):
                self.waiters.reads.close()
            self.applier.close()
            raise

    def _wire(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        config, stats = self.config, self.stats
        self.rpc = RpcServer(rpc_server(ctx, config.store_rpc), {
            WaitApplied: self._on_wait, Query: self._on_wait, WaitAppliedBatch: self._on_wait_batch,
            StatusRequest: lambda _, req: self.status(req.id),
            ExportRead: lambda _, req: self.images.read(req),
            ImageWrite: self._on_image,
            SyncDatabase: lambda _, req: self._on_sync(req),
        }, stats, service="store", prefix="rpc")
        self.images = ImageService(config.db_path, self._swap_in, stats)
        reads = PooledReads(config.db_path, config.store, self.rpc.reply_frames, stats)
        self.waiters = Waiters(self.applier, self.rpc.reply_frames, config.store.max_wait_ms, stats, reads)
        self.notices = NoticePublisher(publisher(ctx, config.store_pub), NOTICE_HEARTBEAT_S, stats)
        self.sub = subscriber(ctx, config.raft_pub)
        self.fetcher = FetchClient(ctx, config.raft_rpc, self._poller, config.raft.fetch_max_bytes, stats)
        self._poller.register(self.rpc.sock, zmq.POLLIN)
        self._poller.register(self.sub, zmq.POLLIN)
        self._poller.register(reads.fd, zmq.POLLIN)

    @property
    def applied(self) -> int:
        return self.applier.applied

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self.images.close()
        self.waiters.reads.close()  # interrupts running reads, joins the workers
        for sock in (self.rpc.sock, self.notices.sock, self.sub):
            sock.close(linger=0)
        self.fetcher.close()
        self.applier.close()

    # == the loop ==============================================================================
    def serve(self) -> None:
        while self.running:
            self.turn()

    def turn(self) -> None:
        events = dict(self._poller.poll(self._poll_timeout_ms(time.monotonic())))
        if self.sub in events and drain(self.sub, MAX_DRAIN, self._on_notice, self.stats, "malformed"):
            self._sub_empty_at = time.monotonic()
        if self.fetcher.sock in events:
            drain(self.fetcher.sock, MAX_DRAIN, self._on_raft_reply, self.stats, "malformed")
        if self.rpc.sock in events:
            self.rpc.drain()
        if self.waiters.reads.fd in events:
            self.waiters.reads.collect()
        now = time.monotonic()
        self.applier.maybe_sync(now)
        self.fetcher.durable = self.applier.durable
        if not self.applier.waiting_for_disk(now):  # else the next fetch brings the failed entries back
            self.fetcher.maybe_fetch(now, self.applied, self.applier.disk_full, self._linger())
        self.images.expire(now)
        self.waiters.expire(now)
        if self.notices.due(now):
            self._publish_applied(now)

    def _poll_timeout_ms(self, now: float) -> int:
        wake = min(now + FETCH_POLL_S, self.waiters.next_wake(now), self.notices.next_heartbeat())
        return max(1, math.ceil(max(wake - now, 0.0) * 1000))

    def _linger(self) -> bool:
        """Nobody waits on this store (a follower's store, mostly): let the raft process
        gather commits into bigger batches."""
        return len(self.waiters) == 0 and not self._awaited

    # == entries ===============================================================================
    def _on_notice(self, msg: object) -> None:
        if isinstance(msg, CommitNotice):
            self.fetcher.on_notice(msg, self._sub_empty_at, self.applied)

    def _on_raft_reply(self, msg: object) -> None:
        if not isinstance(msg, WireMessage):
            return
        entries = self.fetcher.on_reply(msg, self.applied)
        if entries is None:
            return
        now = time.monotonic()
        batch_size = self.config.store.apply_batch_entries
        for start in range(0, len(entries), batch_size):
            if not self._apply(entries[start:start + batch_size], now):
                self.fetcher.stalled()
                return
        if self.fetcher.wants_more(self.applied):
            self.fetcher.send(now, self.applied, self.applier.disk_full, self._linger())

    def _apply(self, entries: list[Entry], now: float) -> bool:
        if not self.applier.apply(entries, now):
            self.waiters.fail_for_disk()
            return False
        self.fetcher.lag.applied_to(self.applied)
        self._awaited = self.waiters.release(now) > 0
        self._publish_applied(now)
        return True

    def _publish_applied(self, now: float) -> None:
        applied = self.applied
        self.notices.publish(lambda epoch, seq: AppliedNotice(epoch, seq, applied), now)

    def _on_sync(self, req: SyncDatabase) -> Synced:
        self.applier.sync(time.monotonic())
        self.fetcher.durable = self.applier.durable
        return Synced(req.id, self.applier.durable)

    # == snapshot images ========================================================================
    def _on_image(self, identity: bytes, req: ImageWrite) -> ImageWritten:
        written = self.images.write(req)
        if written.installed:
            now = time.monotonic()
            self.fetcher.lag.applied_to(self.applied)
            self._awaited = self.waiters.release(now) > 0
            self._publish_applied(now)
        return written

    def _swap_in(self, received: Received) -> int:
        """Replace the database with a received image (image.install): every connection this
        process has to the file is closed first and opened again after, whatever happens."""
        self.waiters.reads.suspend()
        self.applier.close()
        try:
            return install(received, self.config.db_path)
        finally:
            self.applier.reopen()
            self.waiters.reads.resume()

    # == requests ==============================================================================
    def _on_wait(self, identity: bytes, msg: WaitApplied | Query) -> None:
        now = time.monotonic()
        if self.waiters.request(identity, msg, now):
            self.fetcher.hurry(now, self.applied, self.applier.disk_full)

    def _on_wait_batch(self, identity: bytes, msg: WaitAppliedBatch) -> None:
        now = time.monotonic()
        if self.waiters.request_batch(identity, msg, now):
            self.fetcher.hurry(now, self.applied, self.applier.disk_full)

    def status(self, request_id: int = 0) -> StoreStatus:
        return StoreStatus(request_id, applied=self.applied, known_commit=self.fetcher.lag.known_commit,
                           lag_ms=self.fetcher.lag.lag_ms(time.monotonic()), db_path=str(self.config.db_path),
                           parked=len(self.waiters), disk_full=self.applier.disk_full,
                           stats={**self.stats, **self.waiters.reads.gauges()})


def run(config: NodeConfig) -> int:
    """Run until SIGTERM (exit 0) or a fatal error (exit 1, so that the supervisor restarts us)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        process = StoreProcess(config, context)
    except Exception:
        log.exception("store process failed to start")
        context.destroy(linger=0)  # closes whatever sockets were made before the failure
        return ExitCode.FATAL
    log.info("store process for node %d up, applied index %d", config.id, process.applied)
    code = run_shell(process, config.id, "store", log)
    context.term()
    if code == ExitCode.OK:
        log.info("store process stopped cleanly")
    return code
