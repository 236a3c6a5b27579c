"""Request logic of the API process, shared by the HTTP adapter and the native endpoint.

Rules of this module:
- it talks to the raft process, the store process and other nodes only through the small
  Protocols below (RaftClient, StoreClient, PeerClient), so it is tested against fakes and
  knows nothing of sockets or HTTP;
- every request carries one absolute deadline (`time.monotonic()` seconds); each hop gets
  only what remains of it;
- a request never hops more than once between nodes: a forwarded request is marked, and a
  node that is not the leader answers it with NotLeader instead of forwarding it again;
- what went through the log is never retried (its outcome may be unknown); a forward that
  the far end refused as not-leader is, since nothing was appended;
- a request's flags are one typed `ClientOptions`: the store gets the part it needs
  (`.render` for a result wait, `.query` for a read), the leader all of them, marked
  `forwarded`; statements are `zraft.wire.sql.Statement` from parsing to the log;
- the raft and store processes describe themselves with `RaftStatus` and `StoreStatus`; the
  node has one applied index, the store's (`StoreStatus.applied`);
- failures are zraft.api.errors exceptions.

Flows (rqlite store.go / proxy.go, with Raft read-index and result waits; design-anchors 7.4):
- write: Propose -> Proposed(index, term) -> WaitApplied(index, term) -> per-statement results;
  not the leader -> forward ClientExecute to the leader's native endpoint;
- query `none`: local store at once; `weak`: local store if this node leads (leader known from
  the commit-notice stream, else asked), else forwarded; `linearizable`: ReadIndex (the raft
  process forwards it from a follower), then Query(min_applied=index) locally; `strong`:
  through the log like a write, on the leader.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from zraft import __version__
from zraft.api.errors import LEADER_NOT_FOUND, ApiError, BadRequest, Busy, NotLeader, Timeout
from zraft.config import NodeConfig
from zraft.sql.rewrite import RewriteError, rewrite
from zraft.store.command import Command, CommandError, encode_command
from zraft.wire.messages import (
    ClientOptions,
    Compacted,
    CommitNotice,
    JsonObject,
    JsonValue,
    QueryOptions,
    RaftStatus,
    RenderOptions,
    StoreStatus,
    WireMessage,
)
from zraft.wire.sql import Statement

LEVELS = ("none", "weak", "linearizable", "strong")
STALE_READ = "stale read"
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 0.2
RETRY_MARGIN_S = 0.05
LEADER_WAIT_ELECTIONS = 4
"""While no other node is known to lead, a request asks again after 20, 40, 80... ms (at most
200 ms), for at most this many election timeouts (2 s with the default timing) and never
closer to its deadline than the next pause plus RETRY_MARGIN_S; then it is a 503 "leader not
found", as rqlite answers at once."""
STATUS_TIMEOUT_S = 2.0
ROLE_NAMES = {"leader": "Leader", "follower": "Follower", "candidate": "Candidate",
              "pre_candidate": "Candidate"}
"""rqlite's names for RaftStatus.role (a pre-candidate is a candidate to rqlite)."""


class RaftClient(Protocol):
    async def propose(self, data: bytes, timeout: float) -> tuple[int, int]: ...
    async def read_index(self, timeout: float) -> int: ...
    async def status(self, timeout: float) -> RaftStatus: ...
    async def compact(self, durable: int, trailing: int, timeout: float) -> Compacted: ...


class StoreClient(Protocol):
    async def wait_applied(self, index: int, term: int, timeout: float, options: RenderOptions) -> JsonValue: ...
    async def query(self, statements: list[Statement], min_applied: int, timeout: float,
                    options: QueryOptions) -> list[JsonValue]: ...
    async def status(self, timeout: float) -> StoreStatus: ...
    async def sync(self, timeout: float) -> int: ...


class PeerClient(Protocol):
    async def execute(self, statements: list[Statement], timeout: float,
                      options: ClientOptions) -> tuple[list[JsonValue], int]: ...
    async def query(self, statements: list[Statement], level: str, timeout: float,
                    options: ClientOptions) -> tuple[list[JsonValue], int]: ...
    async def status(self, timeout: float) -> JsonObject: ...


Forward = Callable[[int, "Request"], Awaitable["Outcome"]]


class PeerDirectory(Protocol):
    def get(self, node_id: int) -> PeerClient | None: ...


@dataclass(slots=True)
class Request:
    """One execute or query, however it arrived (HTTP or native)."""

    statements: list[Statement]
    deadline: float
    level: str = "weak"
    options: ClientOptions = ClientOptions()
    """rqlite's flags, as they travel with the request when it is forwarded (transaction,
    rendering, rewriting, and `forwarded` itself)."""
    redirect: bool = False
    """Raise NotLeader(leader) instead of forwarding (rqlite's ?redirect)."""

    @property
    def transaction(self) -> bool:
        return self.options.transaction

    @property
    def forwarded(self) -> bool:
        """Came from another node: never forward it again."""
        return self.options.forwarded

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout("request timed out")
        return left


@dataclass(slots=True)
class Outcome:
    results: list[JsonValue]
    raft_index: int = 0
    served_by: int = 0
    """Node id that executed the request."""


class LeaderWait:
    """Pauses between attempts while no other node is known to lead, until `until`. This is
    what lets requests ride through an election or a leader's hand-off (a rolling restart)
    instead of failing: nothing of the request was appended anywhere yet."""

    def __init__(self, until: float) -> None:
        self.until = until
        self.next_pause = RETRY_FIRST_S
        self.waited = False

    async def pause(self) -> None:
        """Sleep before the next attempt; NotLeader("leader not found") when the time is up."""
        if time.monotonic() + self.next_pause + RETRY_MARGIN_S > self.until:
            raise NotLeader(LEADER_NOT_FOUND)
        await asyncio.sleep(self.next_pause)
        self.next_pause = min(self.next_pause * 2, RETRY_MAX_S)
        self.waited = True


class LeaderCache:
    """The leader as last heard (commit notices or a status reply), for a short time."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.leader = 0
        self.term = 0
        self._at = float("-inf")

    def update(self, leader: int, term: int) -> None:
        if term >= self.term:
            self.leader, self.term, self._at = leader, term, time.monotonic()

    def fresh(self) -> int | None:
        """The leader's id while the knowledge is fresh and names a leader, else None."""
        if self.leader and time.monotonic() - self._at <= self.ttl:
            return self.leader
        return None


class Service:
    """The API's request logic. One instance per process, used from one event loop."""

    def __init__(self, config: NodeConfig, raft: RaftClient, store: StoreClient,
                 peers: PeerDirectory) -> None:
        self.config = config
        self.node_id = config.id
        self.raft = raft
        self.store = store
        self.peers = peers
        ttl = max(0.3, config.raft.tick_ms * config.raft.election_ticks / 1000)  # raft notices every 200 ms
        self.leader_cache = LeaderCache(ttl)
        self.in_flight = 0
        self.started = datetime.now(UTC)
        self._started_mono = time.monotonic()

    # == admission =============================================================================
    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request in flight; Busy when config.api.max_in_flight are already."""
        if self.in_flight >= self.config.api.max_in_flight:
            raise Busy("too many requests in flight")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def deadline(self, timeout_s: float | None) -> float:
        """Absolute deadline for a request: its own timeout, else the configured one."""
        default = self.config.api.request_timeout_ms / 1000
        return time.monotonic() + (timeout_s if timeout_s and timeout_s > 0 else default)

    def on_notice(self, msg: WireMessage) -> None:
        """Feed from the raft PUB stream."""
        if isinstance(msg, CommitNotice):
            self.leader_cache.update(msg.leader, msg.term)

    # == writes ================================================================================
    async def execute(self, req: Request) -> Outcome:
        req.statements = self.rewritten(req, read_only=False)
        data = _command(req.statements, req.transaction, budget=self.config.store.max_write_steps)
        return await self._through_log(req, data, self._forward_execute)

    @staticmethod
    def rewritten(req: Request, read_only: bool) -> list[Statement]:
        """The request's statements made deterministic (zraft.sql.rewrite) before they enter
        the log, unless norwrandom / norwtime say otherwise; BadRequest when impossible.

        rqlite's `noparse` skips its SQL parser and so all rewriting. Here it does so only for
        a read-only command (a strong query): every node runs that with writes refused, and
        only the leader's rows are returned, so an unrewritten RANDOM() or 'now' cannot make
        the nodes' databases differ. A write keeps being rewritten: an unrewritten write
        would put a different database on every node, and a flag that exists to skip a
        parser (zraft's rewriter is a lexer; it cannot fail on SQL it does not understand)
        is no reason to accept that. norwrandom / norwtime remain the explicit way to do so."""
        if read_only and req.options.noparse:
            return list(req.statements)
        rand = not req.options.norwrandom
        tm = not req.options.norwtime
        try:
            return [Statement(rewrite(s.sql, random=rand, time=tm), s.params) for s in req.statements]
        except RewriteError as exc:
            raise BadRequest(str(exc)) from None

    async def _through_log(self, req: Request, data: bytes, forward: Forward) -> Outcome:
        waiting = self.leader_wait(req)
        while True:
            try:
                index, term = await self.raft.propose(data, req.remaining())
            except NotLeader as exc:
                outcome = await self._forward_or_wait(exc.leader, req, forward, waiting)
                if outcome is not None:
                    return outcome
                continue
            self.leader_cache.update(self.node_id, term)
            result = await self.store.wait_applied(index, term, req.remaining(), req.options.render)
            return Outcome(_results(result), index, self.node_id)

    def forward_target(self, leader: int, req: Request) -> int:
        """The node to forward to, or 0 while no other node is known to lead (an election or
        a hand-off is under way: the caller waits). A request that was forwarded here, or
        asks for redirects, is answered with the leader instead of going anywhere."""
        usable = leader if leader and leader != self.node_id and self.peers.get(leader) is not None else 0
        if req.forwarded or (req.redirect and usable):
            raise NotLeader("not leader" if usable else LEADER_NOT_FOUND, leader=usable)
        return usable

    async def _forward_or_wait(self, leader: int, req: Request, forward: Forward,
                               waiting: LeaderWait) -> Outcome | None:
        """Forward to `leader` when another node is known to lead; None, after a pause, when
        none is or it answered not-leader (leadership moved, or that node is stopping: nothing
        was done there), so that the caller asks again."""
        target = self.forward_target(leader, req)
        if target:
            try:
                return await forward(target, req)
            except NotLeader:
                pass
        await waiting.pause()
        return None

    def leader_wait(self, req: Request) -> LeaderWait:
        """How this request waits for a leader (see LEADER_WAIT_ELECTIONS)."""
        raft = self.config.raft
        budget = LEADER_WAIT_ELECTIONS * raft.election_ticks * raft.tick_ms / 1000
        return LeaderWait(min(req.deadline, time.monotonic() + budget))

    async def _forward_execute(self, leader: int, req: Request) -> Outcome:
        peer = self._peer(leader)
        results, index = await peer.execute(req.statements, req.remaining(), _forwarded(req))
        return Outcome(results, index, leader)

    async def _forward_query(self, leader: int, req: Request) -> Outcome:
        peer = self._peer(leader)
        results, index = await peer.query(req.statements, req.level, req.remaining(), _forwarded(req))
        return Outcome(results, index, leader)

    def _peer(self, node_id: int) -> PeerClient:
        peer = self.peers.get(node_id)
        if peer is None:
            raise NotLeader(LEADER_NOT_FOUND)
        return peer

    # == reads =================================================================================
    async def query(self, req: Request) -> Outcome:
        if req.level not in LEVELS:
            raise BadRequest(f"invalid level {req.level!r}: use none, weak, linearizable or strong")
        if req.level == "none":
            return await self._local_query(req, 0)
        if req.level == "strong":
            req.statements = self.rewritten(req, read_only=True)
            data = _command(req.statements, req.transaction, read_only=True,
                            budget=self.config.store.max_write_steps)
            return await self._through_log(req, data,
                                           self._forward_query)
        if req.level == "weak":
            return await self._weak_query(req)
        return await self._linearizable_query(req)

    async def _weak_query(self, req: Request) -> Outcome:
        waiting = self.leader_wait(req)
        while True:
            leader = await self.current_leader(req.remaining(), fresh=waiting.waited)
            if leader == self.node_id:
                return await self._local_query(req, 0)
            outcome = await self._forward_or_wait(leader, req, self._forward_query, waiting)
            if outcome is not None:
                return outcome

    async def _linearizable_query(self, req: Request) -> Outcome:
        waiting = self.leader_wait(req)
        while True:
            try:
                index = await self.raft.read_index(req.remaining())
            except NotLeader as exc:
                outcome = await self._forward_or_wait(exc.leader, req, self._forward_query, waiting)
                if outcome is not None:
                    return outcome
                continue
            return await self._local_query(req, index)

    async def _local_query(self, req: Request, min_applied: int) -> Outcome:
        results = await self.store.query(req.statements, min_applied, req.remaining(), req.options.query)
        return Outcome(results, 0, self.node_id)

    # == cluster state =========================================================================
    async def current_leader(self, timeout: float, fresh: bool = False) -> int:
        """The leader's node id (0: none known), from the notice stream or the raft process."""
        if not fresh:
            cached = self.leader_cache.fresh()
            if cached is not None:
                return cached
        return (await self.raft_status(timeout)).leader

    async def raft_status(self, timeout: float) -> RaftStatus:
        """The raft process's status; what it says of the leader refreshes the cache."""
        status = await self.raft.status(timeout)
        self.leader_cache.update(status.leader, status.term)
        return status

    async def snapshot(self, trailing: int, timeout: float) -> bool:
        """rqlite's POST /snapshot on this node: make the store's applied data durable, then
        compact the log up to it, keeping `trailing` entries (-1: the configured margin).
        Whether anything was dropped."""
        durable = await self.store.sync(timeout)
        return (await self.raft.compact(durable, trailing, timeout)).changed

    async def status_document(self) -> dict[str, Any]:
        """rqlite-like /status: os, runtime, build, http, node and store (with raft) sections."""
        raft, store = await asyncio.gather(self.raft_status(STATUS_TIMEOUT_S),
                                           self.store.status(STATUS_TIMEOUT_S),
                                           return_exceptions=True)
        return {
            "build": {"version": __version__, "compiler": platform.python_implementation(),
                      "python": platform.python_version()},
            "http": {"bind_addr": self.config.me().http, "auth": "disabled",
                     "in_flight": self.in_flight},
            "node": self._node_section(),
            "os": {"pid": os.getpid(), "ppid": os.getppid(), "executable": sys.executable,
                   "hostname": socket.gethostname(), "page_size": _page_size()},
            "runtime": {"python": sys.version.split()[0], "num_cpu": os.cpu_count() or 1,
                        "platform": sys.platform},
            "store": self._store_section(raft, store),
        }

    def _node_section(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {"id": str(self.node_id), "start_time": self.started.isoformat(),
                "current_time": now.isoformat(),
                "uptime": f"{time.monotonic() - self._started_mono:.3f}s"}

    def _store_section(self, raft: RaftStatus | BaseException, store: StoreStatus | BaseException
                       ) -> dict[str, Any]:
        """rqlite's `store` section. The node has one applied index, the store's
        (StoreStatus.applied): `raft.applied_index`, `raft.applied`, `fsm_index`,
        `db_applied_index` and `fsm.applied` all show it (0 in `raft`, and absent elsewhere,
        while the store does not answer)."""
        me = self.config.me()
        section: dict[str, Any] = {
            "node_id": str(self.node_id), "addr": _strip_scheme(me.raft), "dir": str(self.config.data_dir),
            "nodes": [{"id": str(p.id), "addr": _strip_scheme(p.raft)} for p in self.config.peers],
        }
        applied = store.applied if isinstance(store, StoreStatus) else 0
        if isinstance(raft, RaftStatus):
            leader = self.config.peer(raft.leader)
            section["leader"] = {"node_id": str(raft.leader) if raft.leader else "",
                                 "addr": _strip_scheme(leader.raft) if leader else ""}
            section["ready"] = bool(raft.leader)
            section["raft"] = {**_raft_fields(raft), "applied": applied,
                               "state": "Shutdown" if raft.removed_by else ROLE_NAMES.get(raft.role, raft.role),
                               "term": raft.term, "commit_index": raft.commit, "applied_index": applied,
                               "last_log_index": raft.last_index, "voter": self.node_id in raft.voters,
                               "num_peers": len(raft.voters) + len(raft.learners) - 1,
                               "last_snapshot_index": raft.snapshot_index,
                               "last_snapshot_term": raft.snapshot_term, "log_size": raft.log_bytes,
                               "log_entries": max(raft.last_index - raft.snapshot_index, 0)}
        else:
            section["ready"] = False
            section["raft"] = {"error": _describe(raft)}
        if isinstance(store, StoreStatus):
            section.update(open=True, fsm_index=applied, db_applied_index=applied, fsm=_store_fields(store))
        else:
            section.update(open=False, fsm={"error": _describe(store)})
        return section

    async def nodes(self, timeout: float) -> list[dict[str, Any]]:
        """rqlite's /nodes objects: one per configured peer, reachability tested in parallel."""
        try:
            leader = await self.current_leader(min(timeout, STATUS_TIMEOUT_S))
        except ApiError:
            leader = 0
        return list(await asyncio.gather(*(self.probe(p.id, leader, timeout) for p in self.config.peers)))

    async def probe(self, node_id: int, leader: int, timeout: float) -> dict[str, Any]:
        peer = self.config.peer(node_id)
        assert peer is not None
        node: dict[str, Any] = {"id": str(node_id), "api_addr": f"http://{peer.http}",
                                "addr": _strip_scheme(peer.raft), "voter": True,
                                "reachable": True, "leader": node_id == leader}
        start = time.perf_counter()
        if node_id != self.node_id:
            client = self.peers.get(node_id)
            try:
                if client is None:
                    raise ApiError("no address")
                await client.status(timeout)
            except ApiError as exc:
                node.update(reachable=False, error=exc.message)
        elapsed = time.perf_counter() - start
        if node["reachable"]:
            node.update(version=__version__, time=elapsed, time_s=f"{elapsed * 1e6:.0f}µs")
        return node

    def leader_contact_age(self) -> float | None:
        """Seconds since this node last heard of a leader (None: this node is the leader).

        Used for rqlite's ``freshness`` on level=none reads."""
        cache = self.leader_cache
        if cache.leader == self.node_id and cache.fresh() is not None:
            return None
        if not cache.leader:
            return float("inf")
        return time.monotonic() - cache._at

    async def check_freshness(self, freshness: float, strict: bool, timeout: float) -> None:
        """rqlite's `freshness` (and `freshness_strict`) on a level=none read: raise "stale
        read" rather than serve data that may be older than `freshness` seconds.

        - Not the leader: refused when this node last heard of a leader more than
          `freshness` ago (rqlite's check, which a leader skips, as in rqlite).
        - `strict`, on any node: also refused when the store's `lag_ms` (how long its applied
          data has been behind a commit index it knew of; zraft.procs.store_proc) exceeds
          `freshness`, or is unknown. rqlite skips the leader here too and compares leader
          clock append times instead; this check is on local monotonic time and also covers
          a leader whose store is stuck, since a strict read promises the data is no older
          than `freshness` behind what was committed, whoever serves it.
        The store is asked before the read and the read runs after, so the data read is at
        least as new as the data checked."""
        if freshness <= 0:
            return
        age = self.leader_contact_age()
        if age is not None and age > freshness:
            raise ApiError(STALE_READ)
        if not strict:
            return
        lag = (await self.store.status(min(timeout, STATUS_TIMEOUT_S))).lag_ms
        if lag is None or lag > freshness * 1000:
            raise ApiError(STALE_READ)  # None: behind since before the store (re)started

    async def sync_check(self, timeout: float) -> tuple[bool, str]:
        """rqlite /readyz?sync: wait until this node has applied the commit index it knows of now."""
        deadline = time.monotonic() + timeout
        try:
            target = (await self.raft_status(min(timeout, STATUS_TIMEOUT_S))).commit
            while True:
                store = await self.store.status(min(max(deadline - time.monotonic(), 0.01), STATUS_TIMEOUT_S))
                if store.applied >= target:
                    return True, "[+]sync ok\n"
                if time.monotonic() >= deadline:
                    return False, "[+]sync timeout\n"
                await asyncio.sleep(0.05)
        except ApiError as exc:
            return False, f"[+]sync failed: {exc.message}\n"

    async def readiness(self, noleader: bool) -> tuple[bool, str]:
        """rqlite's /readyz lines and whether the node is ready."""
        text = "[+]node ok\n"
        if noleader:
            return True, text
        try:
            leader = await self.current_leader(STATUS_TIMEOUT_S)
        except ApiError as exc:
            return False, text + f"[+]leader not contactable: {exc.message}\n"
        if not leader:
            return False, text + "[+]leader does not exist\n"
        text += "[+]leader ok\n"
        try:
            await self.store.query([Statement("SELECT 1")], 0, STATUS_TIMEOUT_S, QueryOptions())
        except ApiError as exc:
            return False, text + f"[+]store not ready: {exc.message}\n"
        return True, text + "[+]store ok\n[+]db ok\n"


def _command(statements: list[Statement], transaction: bool, read_only: bool = False,
             budget: int | None = None) -> bytes:
    """The log entry for a request, stamped here, once, by the node that proposes it: this
    node's wall clock (ms), a random 63-bit seed and the entry's SQLite VM-step budget
    (`store.max_write_steps`; the store's default when None). Every node applies the entry
    with this clock and seed and stops it after this many steps, whatever its own clock and
    configuration (zraft/store/DESIGN.md, "Determinism")."""
    try:
        return encode_command(Command.stamped(statements, transaction, read_only, budget=budget))
    except CommandError as exc:
        raise BadRequest(str(exc)) from None


def _forwarded(req: Request) -> ClientOptions:
    """The options a request travels with to the leader: all of its flags, marked as
    forwarded so that the leader never forwards it again."""
    return replace(req.options, forwarded=True)


def _results(result: JsonValue) -> list[JsonValue]:
    """The store's per-statement result list (a bare list, or a {"results": [...]} object)."""
    if isinstance(result, dict):
        results = result.get("results")
        if isinstance(results, list):
            if result.get("error"):
                raise ApiError(str(result["error"]))
            return list(results)
    if isinstance(result, list):
        return result
    return [result]


def _raft_fields(status: RaftStatus) -> dict[str, Any]:
    """RaftStatus as the `store.raft` keys it has always had: every field but the message
    id, `progress` only on a leader."""
    doc = {f.name: getattr(status, f.name) for f in fields(status) if f.name not in ("id", "progress")}
    if status.role == "leader":
        doc["progress"] = {node: asdict(p) for node, p in status.progress.items()}
    return doc


def _store_fields(status: StoreStatus) -> dict[str, Any]:
    """StoreStatus as `store.fsm` has always shown it: every field but the message id, with
    the counters flattened in beside them."""
    doc: dict[str, Any] = {f.name: getattr(status, f.name) for f in fields(status)
                           if f.name not in ("id", "stats")}
    return {**doc, **status.stats}


def _strip_scheme(address: str) -> str:
    return address.split("://", 1)[-1]


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4096
