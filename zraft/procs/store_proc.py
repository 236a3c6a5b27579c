"""The store process: applies committed entries to SQLite and serves queries and result waits.

It pulls committed entries from the raft process by index (FetchEntries); commit notices on
the raft PUB socket only wake it up. If notices are lost (slow joiner, full queue, raft
restart), the periodic fetch still finds the new entries: a lost notice delays, it never
stalls or corrupts (the Clone pattern's "recover by request").

Every applied batch commits the statements and the new applied index in one SQLite
transaction, so after a kill -9 the process resumes exactly where the database says it is.

Requests it serves on its ROUTER (config.store_rpc):
- WaitApplied(index, term): parks until `index` is applied, then answers with that entry's
  results, or `leadership_lost` when another entry (another term) took the index;
- Query(statements, min_applied): parks until `min_applied` is applied, then runs the reads;
- StatusRequest: the applied index and counters.
"""

from __future__ import annotations

import heapq
import logging
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import zmq

from zraft.config import NodeConfig
from zraft.procs.raft_proc import profiled
from zraft.raft.types import EntryKind
from zraft.store.apply import ApplyResult
from zraft.store.command import Statement, decode_statement
from zraft.store.db import Database
from zraft.transport.sockets import publisher, rpc_dealer, rpc_server
from zraft.wire import RemoteProtocolError, decode, encode
from zraft.wire.messages import (
    AppliedNotice,
    AppliedResult,
    AppliedResultBatch,
    CommitNotice,
    EntriesReply,
    Error,
    FetchEntries,
    Query,
    QueryResult,
    StatusReply,
    StatusRequest,
    WaitApplied,
    WaitAppliedBatch,
    WireMessage,
)

log = logging.getLogger("zraft.store")

FETCH_TIMEOUT_S = 1.0    # beyond the long-poll wait
FETCH_POLL_S = 0.25      # fetch even without a notice this often: notices are only hints
FETCH_WAIT_MS = 500      # long poll: the raft process holds a fetch this long for new commits
FETCH_LINGER_MS = 10     # ... and, while nobody waits on this store, gathers commits this long
NOTICE_HEARTBEAT_S = 0.2
MAX_PARKED = 100_000


@dataclass(order=True)
class _Parked:
    """A request waiting for the applied index to reach `index`."""

    index: int
    deadline: float
    seq: int
    identity: bytes = field(compare=False)
    request: WaitApplied | Query = field(compare=False)


class StoreProcess:
    def __init__(self, config: NodeConfig, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.config = config
        self.context = context
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.db_path)
        self.applied = self.db.applied_index()
        self.applied_term = 0
        self.known_commit = 0
        self.results: OrderedDict[int, tuple[int, ApplyResult]] = OrderedDict()
        self.parked: list[_Parked] = []
        self.stats: dict[str, int] = {"malformed": 0, "notices": 0, "notice_gaps": 0,
                                      "fetches": 0, "fetch_timeouts": 0, "applied_entries": 0}
        self.epoch = time.time_ns()
        self.notice_seq = 0
        self._seq = 0
        self._fetch_id = 0
        self._fetch_deadline = 0.0
        self._long_poll = True  # the next fetch may wait at the raft process for new commits
        self._lingering = False  # the fetch in flight lets the raft process gather commits
        self._awaited = False  # the last applied batch answered a waiting request
        self._last_fetch = 0.0
        self._last_notice_sent = 0.0
        self._next_expiry_scan = 0.0
        self._raft_notice: tuple[int, int] = (0, 0)  # (epoch, seq) of the last commit notice
        # Requesters that sent a WaitAppliedBatch, so understand AppliedResultBatch; while a
        # batch of answers is being made, the WaitApplied ones to those gather here.
        self._batch_peers: OrderedDict[bytes, None] = OrderedDict()
        self._gathered: dict[bytes, list[WireMessage]] | None = None
        self.running = True
        self._open_sockets()

    # == sockets ==============================================================================
    def _open_sockets(self) -> None:
        ctx = self.context
        self.rpc = rpc_server(ctx, self.config.store_rpc)
        self.pub = publisher(ctx, self.config.store_pub)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.config.raft_pub)
        self._open_raft()

    def _open_raft(self) -> None:
        self.raft = rpc_dealer(self.context, self.config.raft_rpc)

    def close(self) -> None:
        for sock in (self.rpc, self.pub, self.sub, self.raft):
            sock.close(linger=0)
        self.db.close()

    # == main loop ============================================================================
    def run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.rpc, self.sub, self.raft):
            poller.register(sock, zmq.POLLIN)
        while self.running:
            events = dict(poller.poll(self._poll_timeout_ms()))
            if self.sub in events:
                self._drain(self.sub, self._on_notice)
            if self.raft in events:
                self._drain(self.raft, self._on_raft_reply)
            if self.rpc in events:
                self._drain_router()
            now = time.monotonic()
            self._maybe_fetch(now, poller)
            self._expire(now)
            if now - self._last_notice_sent >= NOTICE_HEARTBEAT_S:
                self._publish_applied()

    def _poll_timeout_ms(self) -> int:
        wait = FETCH_POLL_S
        if self.parked:
            wait = min(wait, max(0.0, self.parked[0].deadline - time.monotonic()))
        return max(1, int(wait * 1000))

    def _drain(self, sock: zmq.Socket[bytes], handler: Any, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handler(decode(frames))
            except RemoteProtocolError as exc:
                self.stats["malformed"] += 1
                log.warning("dropped a malformed message: %s", exc)

    def _drain_router(self, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                identity, *frames = self.rpc.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                msg = decode(frames)
            except RemoteProtocolError as exc:
                self.stats["malformed"] += 1
                log.warning("dropped a malformed request: %s", exc)
                continue
            if isinstance(msg, WireMessage):
                self._on_request(identity, msg)
            else:
                self.stats["malformed"] += 1

    def _reply(self, identity: bytes, msg: WireMessage) -> None:
        try:
            self.rpc.send_multipart([identity, *encode(msg)], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass  # the requester is gone or not reading; it will time out and retry

    # == commit notices and fetching ==========================================================
    def _on_notice(self, msg: Any) -> None:
        if not isinstance(msg, CommitNotice):
            return
        self.stats["notices"] += 1
        epoch, seq = self._raft_notice
        if msg.epoch == epoch and msg.seq != seq + 1:
            self.stats["notice_gaps"] += 1
        if epoch and msg.epoch != epoch and self._fetch_id:
            self._fetch_deadline = 0.0  # the raft process restarted: a fetch it held is lost
        self._raft_notice = (msg.epoch, msg.seq)
        self.known_commit = max(self.known_commit, msg.commit)

    def _maybe_fetch(self, now: float, poller: zmq.Poller) -> None:
        if self._fetch_id and now < self._fetch_deadline:
            return
        if self._fetch_id:  # timed out: Lazy Pirate, drop the socket and its stale replies
            self.stats["fetch_timeouts"] += 1
            poller.unregister(self.raft)
            self.raft.close(linger=0)
            self._open_raft()
            poller.register(self.raft, zmq.POLLIN)
            self._fetch_id = 0
        if self._long_poll or self.known_commit > self.applied or now - self._last_fetch >= FETCH_POLL_S:
            self._send_fetch(now)

    def _send_fetch(self, now: float) -> None:
        self._seq += 1
        self._fetch_id = self._seq
        # Long poll only right after entries arrived: an empty reply means the wait expired
        # (or the raft process does not hold fetches), and then notices and the periodic
        # fetch take over until entries flow again, so that nothing ever spins.
        wait_ms = FETCH_WAIT_MS if self._long_poll else 0
        self._long_poll = False
        # Nobody waiting here (a follower's store, mostly): take commits in bigger batches;
        # a request that parks meanwhile sends a fetch without linger (see _park).
        self._lingering = bool(wait_ms) and not self.parked and not self._awaited
        self._fetch_deadline = now + FETCH_TIMEOUT_S + wait_ms / 1000
        self._last_fetch = now
        self.stats["fetches"] += 1
        request = FetchEntries(id=self._fetch_id, start=self.applied + 1,
                               max_bytes=self.config.raft.fetch_max_bytes, wait_ms=wait_ms,
                               linger_ms=FETCH_LINGER_MS if self._lingering else 0)
        try:
            self.raft.send_multipart(encode(request), zmq.NOBLOCK)
        except zmq.Again:
            self._fetch_id = 0

    def _on_raft_reply(self, msg: Any) -> None:
        if getattr(msg, "id", None) != self._fetch_id:
            return  # a reply to a request we gave up on
        self._fetch_id = 0
        if isinstance(msg, Error):
            log.warning("fetch failed: %s %s", msg.code, msg.message)
            return
        if not isinstance(msg, EntriesReply):
            return
        self.known_commit = max(self.known_commit, msg.commit)
        entries = [e for e in msg.entries if e.index > self.applied]
        self._long_poll = bool(entries)
        batch_size = self.config.store.apply_batch_entries
        for start in range(0, len(entries), batch_size):
            self._apply(entries[start:start + batch_size])
        if self.known_commit > self.applied or self._long_poll:
            self._send_fetch(time.monotonic())

    def _apply(self, entries: list[Any]) -> None:
        batch = [(e.index, e.data if e.kind == EntryKind.NORMAL and e.data else None) for e in entries]
        results = self.db.apply_entries(batch)
        for entry, result in zip(entries, results):
            self.results[entry.index] = (entry.term, result)
        while len(self.results) > self.config.store.results_kept:
            self.results.popitem(last=False)
        self.applied = self.db.applied_index()
        self.applied_term = entries[-1].term
        self.stats["applied_entries"] += len(entries)
        self._awaited = bool(self.parked) and self.parked[0].index <= self.applied
        self._release_parked()
        self._publish_applied()

    def _publish_applied(self) -> None:
        self.notice_seq += 1
        self._last_notice_sent = time.monotonic()
        notice = AppliedNotice(epoch=self.epoch, seq=self.notice_seq, applied=self.applied)
        try:
            self.pub.send_multipart(encode(notice), zmq.NOBLOCK)
        except zmq.Again:
            pass

    # == requests =============================================================================
    def _on_request(self, identity: bytes, msg: WireMessage) -> None:
        if isinstance(msg, (WaitApplied, Query)):
            index = msg.index if isinstance(msg, WaitApplied) else msg.min_applied
            if index <= self.applied:
                self._answer(identity, msg)
            elif len(self.parked) >= MAX_PARKED:
                self._reply(identity, Error(id=msg.id, code="busy", message="too many waiting requests"))
            else:
                timeout_s = min(msg.timeout_ms, self.config.store.max_wait_ms) / 1000
                self._seq += 1
                heapq.heappush(self.parked, _Parked(index, time.monotonic() + timeout_s, self._seq,
                                                    identity, msg))
                if self._fetch_id and self._lingering:
                    # Someone waits now: replace the lingering fetch with an eager long poll
                    # (the raft process drops the one it held from us).
                    self._long_poll = True
                    self._send_fetch(time.monotonic())
        elif isinstance(msg, WaitAppliedBatch):
            self._batch_peers[identity] = None
            self._batch_peers.move_to_end(identity)
            if len(self._batch_peers) > 1024:
                self._batch_peers.popitem(last=False)
            self._gather()
            for row in msg.requests:
                try:
                    request_id, index, term, timeout_ms, options = row
                    single = WaitApplied(id=request_id, index=index, term=term, timeout_ms=timeout_ms,
                                         options=options)
                    valid = (all(isinstance(v, int) and not isinstance(v, bool)
                                 for v in (request_id, index, term, timeout_ms))
                             and isinstance(options, dict))
                except (TypeError, ValueError):
                    valid = False
                if not valid:
                    self.stats["malformed"] += 1
                    continue
                self._on_request(identity, single)
            self._send_gathered()
        elif isinstance(msg, StatusRequest):
            status = {"applied": self.applied, "known_commit": self.known_commit,
                      "db_path": str(self.config.db_path), "parked": len(self.parked), **self.stats}
            self._reply(identity, StatusReply(id=msg.id, status=status))
        else:
            self._reply(identity, Error(id=getattr(msg, "id", 0), code="bad_request",
                                        message=f"the store does not serve {type(msg).__name__}"))

    def _release_parked(self) -> None:
        ready = [p for p in self.parked if p.index <= self.applied]
        if not ready:
            return
        self.parked = [p for p in self.parked if p.index > self.applied]
        heapq.heapify(self.parked)
        self._gather()
        for parked in sorted(ready):
            self._answer(parked.identity, parked.request)
        self._send_gathered()

    def _gather(self) -> None:
        if self._gathered is None:
            self._gathered = {}

    def _send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, None
        for identity, replies in (gathered or {}).items():
            if len(replies) == 1:
                self._reply(identity, replies[0])
                continue
            rows: list[Any] = []
            for reply in replies:
                if isinstance(reply, AppliedResult):
                    rows.append([reply.id, reply.index, reply.result])
                else:
                    assert isinstance(reply, Error)
                    rows.append([reply.id, reply.code, reply.message, reply.leader])
            self._reply(identity, AppliedResultBatch(id=0, rows=rows))

    def _expire(self, now: float) -> None:
        if now < self._next_expiry_scan:
            return
        self._next_expiry_scan = now + 0.05
        expired = [p for p in self.parked if p.deadline <= now]
        if not expired:
            return
        self.parked = [p for p in self.parked if p.deadline > now]
        heapq.heapify(self.parked)
        for parked in expired:
            self._reply(parked.identity, Error(id=parked.request.id, code="timeout",
                                               message=f"index {parked.index} not applied in time "
                                                       f"(applied {self.applied})"))

    def _answer(self, identity: bytes, msg: WaitApplied | Query) -> None:
        if isinstance(msg, WaitApplied):
            reply = self._wait_result(msg)
            if self._gathered is not None and identity in self._batch_peers:
                self._gathered.setdefault(identity, []).append(reply)
            else:
                self._reply(identity, reply)
            return
        options = msg.options or {}
        try:
            statements = [_statement(s) for s in msg.statements]
        except (TypeError, ValueError) as exc:
            self._reply(identity, Error(id=msg.id, code="bad_request", message=str(exc)))
            return
        db_timeout_ms = options.get("db_timeout_ms")
        timeout_s = db_timeout_ms / 1000 if isinstance(db_timeout_ms, int) and db_timeout_ms > 0 else None
        applied, results = self.db.query_with_index(
            statements, associative=bool(options.get("associative")),
            blob_array=bool(options.get("blob_array")), timeout_s=timeout_s,
            qualify_columns=bool(options.get("qualify_columns")))
        self._reply(identity, QueryResult(id=msg.id, results=results, applied=applied))

    def _wait_result(self, msg: WaitApplied) -> WireMessage:
        cached = self.results.get(msg.index)
        if cached is None:
            return Error(id=msg.id, code="result_unavailable",
                         message=f"entry {msg.index} was applied but its result is no longer kept")
        term, result = cached
        if term != msg.term:
            return Error(id=msg.id, code="leadership_lost",
                         message=f"entry {msg.index} was replaced by one from term {term}")
        options = msg.options or {}
        rendered = result.render(associative=bool(options.get("associative")),
                                 blob_array=bool(options.get("blob_array")))
        return AppliedResult(id=msg.id, index=msg.index, result=rendered)


def _statement(raw: Any) -> Statement:
    """A wire statement is [sql, params] with params a list, a dict or null."""
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise ValueError(f"a statement must be [sql, params], not {raw!r}")
    params = raw[1] if len(raw) > 1 else None
    if params is not None and not isinstance(params, (list, dict)):
        raise ValueError("statement parameters must be a list or an object")
    # BLOBs travel as {"b64": ...} (zraft.api.statements.to_wire), as in log entries
    return decode_statement({"sql": raw[0], "params": params})


def run(config: NodeConfig) -> int:
    """Run until SIGTERM (exit 0) or a fatal error (exit 1, so that the supervisor restarts us)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        process = StoreProcess(config, context)
    except Exception:
        log.exception("store process failed to start")
        context.term()
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        process.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("store process for node %d up, applied index %d", config.id, process.applied)
    try:
        profiled(process.run, config.id, "store")
    except Exception:
        log.exception("store process stopped on a fatal error")
        return 1
    finally:
        process.close()
        context.term()
    log.info("store process stopped cleanly")
    return 0
