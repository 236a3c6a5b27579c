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
- a full disk (SQLITE_FULL, or an I/O error) while applying ends nothing: the batch's
  transaction rolls back (statements and applied index together), requests waiting for what
  cannot be applied get a "disk full: ..." error at once, reads of what is applied go on, the
  same entries are fetched and applied again every DISK_RETRY_S, and fetches carry the reason
  so that the raft process refuses writes and hands leadership away meanwhile;
- StatusRequest: the applied index, the commit index it knows of, how long its data has been
  behind (`lag_ms`, for rqlite's freshness_strict) and counters.

How `lag_ms` is measured: each time the store hears the raft process's commit index it also
knows a moment at which that commit was at most the value heard: for a fetch reply the time
the fetch was sent, for a notice the last time the SUB queue was found empty before it was
read (the notice was sent after that). So when a commit index above the known one shows up,
its new entries were committed after the latest such moment of the earlier hearings, and that
moment is recorded as their commit time: early, never late, even when the store was stalled
and read a backlog of notices at once. `lag_ms` is the age of the oldest record not yet
covered by the applied index: 0 when caught up, and `None` (unknown) when the store was already
behind at the first hearing after it started, since nothing says how old its data is then.
Local monotonic time only, no leader clocks: rqlite instead compares the leader's append time
of the last applied entry with the local time it was applied, which needs synchronised clocks
and stays small while the state machine is stuck; this measure grows while the store is stuck
or slow, which is what a strict read must refuse. It cannot see commits the local raft process
has not learned of (a follower whose log still trails the leader's): that would need the
leader's commit index, which the raft process does not report.
"""

from __future__ import annotations

import heapq
import logging
import math
import signal
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import apsw
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
DISK_RETRY_S = 1.0       # a batch that failed for lack of disk space is tried again this often
DISK_ERRORS = (apsw.FullError, apsw.IOError)
"""Errors of the node's disk, not of the entry: rolled back and retried, never a result."""
MAX_LAG_MARKS = 4096     # (commit, since) records kept for lag_ms; beyond, the newest merge


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
        # (commit index, a monotonic time before the entries up to it were committed) for
        # commits above the applied index, oldest first: the source of lag_ms (module doc).
        self._lag_marks: deque[tuple[int, float]] = deque()
        # The latest moment at which the raft process's commit is known to have been at most
        # known_commit; -inf before anything was heard.
        self._commit_bound_at = float("-inf")
        self._sub_empty_at = float("-inf")  # when draining the notice SUB last emptied it
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
        # The raft process's last reply had nothing above our applied index: its commit is
        # behind ours (it salvaged a damaged log and fetches the lost entries from its leader,
        # or it lost an unsynced commit). Fetching again at once would only spin; a notice of
        # a commit above the applied index, or the periodic fetch, resumes.
        self._raft_behind = False
        self._last_notice_sent = 0.0
        self._next_expiry_scan = 0.0
        self._raft_notice: tuple[int, int] = (0, 0)  # (epoch, seq) of the last commit notice
        # Requesters that sent a WaitAppliedBatch, so understand AppliedResultBatch; while a
        # batch of answers is being made, the WaitApplied ones to those gather here.
        self._batch_peers: OrderedDict[bytes, None] = OrderedDict()
        self._gathered: dict[bytes, list[WireMessage]] | None = None
        self.disk_full = ""  # why entries cannot be applied now ("disk full: ..."); "" when fine
        self._retry_at = 0.0
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
            if self.sub in events and self._drain(self.sub, self._on_notice):
                self._sub_empty_at = time.monotonic()
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

    def _drain(self, sock: zmq.Socket[bytes], handler: Any, limit: int = 1000) -> bool:
        """Handle what `sock` holds, up to `limit` messages; True when it was emptied."""
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            try:
                handler(decode(frames))
            except RemoteProtocolError as exc:
                self.stats["malformed"] += 1
                log.warning("dropped a malformed message: %s", exc)
        return False

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
        if msg.commit > self.applied:
            self._raft_behind = False
        self._heard_commit(msg.commit, self._sub_empty_at)  # sent after the SUB was last empty

    def _heard_commit(self, commit: int, at_most_then: float) -> None:
        """Record the raft process's commit index as heard, for fetching and for lag_ms;
        `at_most_then` is a moment at which that commit was at most `commit`.

        Entries above the known commit were not committed at the latest such moment of earlier
        hearings, so they are marked with it: lag_ms then overstates the data's age by at most
        the gap between hearings (notices come on every commit advance and every 200 ms) and
        never understates it. Before any hearing that moment is -inf: "behind since unknown"."""
        if commit > self.known_commit:
            self.known_commit = commit
            if commit > self.applied:
                since = self._commit_bound_at
                if len(self._lag_marks) >= MAX_LAG_MARKS:
                    # Bound the memory: the newest mark takes the larger index and keeps its
                    # older time, which only overstates the lag of the entries in between.
                    since = self._lag_marks.pop()[1]
                self._lag_marks.append((commit, since))
        self._commit_bound_at = max(self._commit_bound_at, at_most_then)

    def lag_ms(self, now: float | None = None) -> int | None:
        """How long, in ms, the applied data has been behind a commit this store knew of;
        0 when caught up, None when it has been behind since before it first heard the raft
        process (so how long is unknown)."""
        if not self._lag_marks:
            return 0
        since = self._lag_marks[0][1]
        if since == float("-inf"):
            return None
        return max(0, math.ceil(((time.monotonic() if now is None else now) - since) * 1000))

    def _maybe_fetch(self, now: float, poller: zmq.Poller) -> None:
        if self.disk_full and now < self._retry_at:
            return  # the next fetch brings the entries that failed back for another try
        if self._fetch_id and now < self._fetch_deadline:
            return
        if self._fetch_id:  # timed out: Lazy Pirate, drop the socket and its stale replies
            self.stats["fetch_timeouts"] += 1
            poller.unregister(self.raft)
            self.raft.close(linger=0)
            self._open_raft()
            poller.register(self.raft, zmq.POLLIN)
            self._fetch_id = 0
        behind = self.known_commit > self.applied and not self._raft_behind
        if self._long_poll or behind or now - self._last_fetch >= FETCH_POLL_S:
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
                               linger_ms=FETCH_LINGER_MS if self._lingering else 0,
                               disk_full=self.disk_full)
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
        self._heard_commit(msg.commit, self._last_fetch)  # answered after the fetch was sent
        entries = [e for e in msg.entries if e.index > self.applied]
        self._long_poll = bool(entries)
        self._raft_behind = not entries and msg.commit <= self.applied
        batch_size = self.config.store.apply_batch_entries
        for start in range(0, len(entries), batch_size):
            if not self._apply(entries[start:start + batch_size]):
                self._long_poll = False
                return
        if (self.known_commit > self.applied and not self._raft_behind) or self._long_poll:
            self._send_fetch(time.monotonic())

    def _apply(self, entries: list[Any]) -> bool:
        """Apply one batch; False when the disk refused it (nothing of it was applied)."""
        batch = [(e.index, e.data if e.kind == EntryKind.NORMAL and e.data else None) for e in entries]
        try:
            results = self.db.apply_entries(batch)
        except DISK_ERRORS as exc:
            self._cannot_apply(exc, entries[0].index)
            return False
        if self.disk_full:
            log.warning("applying again from index %d (after: %s)", entries[0].index, self.disk_full)
            self.disk_full = ""
        for entry, result in zip(entries, results):
            self.results[entry.index] = (entry.term, result)
        while len(self.results) > self.config.store.results_kept:
            self.results.popitem(last=False)
        self.applied = self.db.applied_index()
        while self._lag_marks and self._lag_marks[0][0] <= self.applied:
            self._lag_marks.popleft()
        self.applied_term = entries[-1].term
        self.stats["applied_entries"] += len(entries)
        self._awaited = bool(self.parked) and self.parked[0].index <= self.applied
        self._release_parked()
        self._publish_applied()
        return True

    def _cannot_apply(self, exc: apsw.Error, index: int) -> None:
        """The batch from `index` was rolled back by a disk error: remember why, fail the
        requests that wait for it (a wait must end with a clear error, not a timeout), and let
        the next fetch, DISK_RETRY_S from now, bring the same entries back."""
        if isinstance(exc, apsw.FullError):
            reason = f"disk full: {self.config.db_path}"
        else:
            reason = f"disk error: {self.config.db_path}: {exc}"
        if reason != self.disk_full:
            log.error("cannot apply entry %d (%s); reads go on, retrying every %.1f s",
                      index, reason, DISK_RETRY_S)
        self.disk_full = reason
        self._retry_at = time.monotonic() + DISK_RETRY_S
        self.stats["apply_disk_errors"] = self.stats.get("apply_disk_errors", 0) + 1
        waiting, self.parked = self.parked, []
        for parked in waiting:
            self._reply(parked.identity, self._disk_full_error(parked.request))

    def _disk_full_error(self, msg: WaitApplied | Query) -> Error:
        if isinstance(msg, WaitApplied):
            return Error(id=msg.id, code="not_applied",
                         message=f"{self.disk_full}: entry {msg.index} is not applied on this node until "
                                 f"space is freed; the write's outcome is unknown (it may be committed)")
        return Error(id=msg.id, code="disk_full",
                     message=f"{self.disk_full}: this node cannot apply the log up to index "
                             f"{msg.min_applied} until space is freed")

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
            elif self.disk_full:
                self._reply(identity, self._disk_full_error(msg))
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
            status = {"applied": self.applied, "known_commit": self.known_commit, "lag_ms": self.lag_ms(),
                      "db_path": str(self.config.db_path), "parked": len(self.parked),
                      "disk_full": self.disk_full, **self.stats}
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
