"""rqlite's HTTP API on aiohttp: routing, query parameters, bodies, status codes, JSON.

Rules of this module:
- it is an adapter only: request logic lives in zraft.api.service;
- routes and methods are exact (ROUTES); an unknown path is 404 and a wrong method 405, both
  with empty bodies, as rqlite answers them; OPTIONS on any path is a 200 CORS pre-flight;
- query parameters are flags (presence matters, value ignored), durations are Go durations
  ("500ms", "2s", "1m30s"); anything invalid is a 400 with a one-line text body;
- a body larger than config.api.max_body_bytes is a 413 decided from Content-Length before
  reading anything, and otherwise by a capped read;
- error mapping (zraft.api.errors): BadRequest 400 text, TooLarge 413 text, NotLeader 503
  "leader not found" (301 to the leader with ?redirect), Unavailable/Busy 503 text, every
  other failure 200 `{"results": [], "error": "..."}` as rqlite does, except DiskFull: 503
  with that same JSON body;
- every response carries X-RQLITE-VERSION; served requests carry X-RQLITE-SERVED-BY (the
  HTTP address of the node that executed them);
- request-level checks before anything runs: rqlite's disallowed PRAGMAs (200
  `{"results": [], "error": "disallowed pragma"}` as rqlite), negative durations (400),
  `freshness` / `freshness_strict` on level=none reads ("stale read", Service.check_freshness);
- `noparse` skips rewriting for strong reads only (Service.rewritten says why); `retries` is
  validated and not used: a forward already waits the request's whole `timeout` while
  ZeroMQ reconnects, and is retried only where nothing can have been appended (not-leader
  answers); resending a write whose outcome is unknown, as rqlite's retries do, could apply
  it twice; `nonvoters` changes nothing on /nodes since every configured node is a voter;
- /db/request classifies with SQLite (zraft.store.reads, the node's one read/write
  classifier), /db/execute?queue uses zraft.api.queue, /db/backup and /db/load
  zraft.api.backup; statements are rewritten for determinism in zraft.api.service before
  they enter the log.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from zraft import __version__
from zraft.api import backup
from zraft.api.errors import (
    LEADER_NOT_FOUND,
    ApiError,
    BadRequest,
    DiskFull,
    NotLeader,
    TooLarge,
    Unavailable,
)
from zraft.api.service import LEVELS, Outcome, Request, Service
from zraft.api.queue import WriteQueue
from zraft.api.statements import disallowed_pragma, parse_body
from zraft.config import NodeConfig
from zraft.sql.rewrite import explain_rewrite
from zraft.store import reads
from zraft.wire.messages import ClientOptions
from zraft.wire.sql import Statement

VERSION_HEADER = "X-RQLITE-VERSION"
SERVED_BY_HEADER = "X-RQLITE-SERVED-BY"
JSON_TYPE = "application/json"
DEFAULT_NODES_TIMEOUT_S = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# == query parameters =========================================================================
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration ("1.5s", "300ms", "1m30s", "0") in seconds; ValueError otherwise."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(text)
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(text)
    return -total if text.startswith("-") else total


@dataclass(frozen=True, slots=True)
class Params:
    pretty: bool = False
    timings: bool = False
    transaction: bool = False
    associative: bool = False
    blob_array: bool = False
    raft_index: bool = False
    redirect: bool = False
    qualify_columns: bool = False
    norwrandom: bool = False
    norwtime: bool = False
    noparse: bool = False
    queue: bool = False
    wait: bool = False
    noleader: bool = False
    freshness: float | None = None
    freshness_strict: bool = False
    level: str = "weak"
    timeout: float | None = None
    db_timeout: float | None = None


def parse_params(query: MultiMapping[str]) -> Params:
    """rqlite's query parameters (http/query_params.go), validated up front."""
    durations: dict[str, float | None] = {}
    for key in ("timeout", "freshness", "db_timeout", "linearizable_timeout"):
        raw = query.get(key)
        try:
            durations[key] = None if raw is None else parse_duration(raw)
        except ValueError:
            raise BadRequest(f"{key} is not a valid duration") from None
    for key in ("retries", "trailing_logs"):
        raw = query.get(key)
        if raw is not None and not re.fullmatch(r"[+-]?\d+", raw):
            raise BadRequest(f"{key} is not a valid integer")
    for key, value in durations.items():
        if value is not None and value < 0:
            raise BadRequest(f"{key} must not be negative")
    if "freshness_strict" in query and "freshness" not in query:
        raise BadRequest("freshness_strict requires freshness")
    level = query.get("level", "weak").lower() or "weak"
    if level == "auto":
        level = "weak"  # every configured node is a voter
    if level not in LEVELS:
        raise BadRequest(f"invalid level {query.get('level')!r}: use none, weak, linearizable or strong")
    timeout = durations["timeout"]
    linearizable = durations["linearizable_timeout"]
    if level == "linearizable" and linearizable:
        timeout = min(timeout, linearizable) if timeout else linearizable
    return Params(
        pretty="pretty" in query, timings="timings" in query, transaction="transaction" in query,
        associative="associative" in query, blob_array="blob_array" in query,
        raft_index="raft_index" in query, redirect="redirect" in query,
        qualify_columns="qualify_columns" in query, norwrandom="norwrandom" in query,
        norwtime="norwtime" in query, noparse="noparse" in query, queue="queue" in query,
        wait="wait" in query,
        noleader="noleader" in query, freshness=durations["freshness"],
        freshness_strict="freshness_strict" in query, level=level, timeout=timeout,
        db_timeout=durations["db_timeout"],
    )


def _options(params: Params) -> ClientOptions:
    """The flags that travel with the request (timings, pretty, raft_index and the like are
    this adapter's own business)."""
    return ClientOptions(
        associative=params.associative, blob_array=params.blob_array,
        qualify_columns=params.qualify_columns,
        db_timeout_ms=max(1, int(params.db_timeout * 1000)) if params.db_timeout else 0,
        transaction=params.transaction, norwrandom=params.norwrandom, norwtime=params.norwtime,
        noparse=params.noparse)


# == responses ================================================================================
def dumps(doc: Any, pretty: bool) -> bytes:
    if pretty:  # Go's MarshalIndent with four spaces
        return json.dumps(doc, indent=4, ensure_ascii=False).encode()
    return orjson.dumps(doc)


def json_response(doc: Any, params: Params, status: int = 200) -> web.Response:
    return web.Response(body=dumps(doc, params.pretty), status=status, content_type=JSON_TYPE,
                        charset="utf-8")


def text_response(status: int, text: str) -> web.Response:
    """rqlite's plain-text errors (Go http.Error: the message and a newline)."""
    return web.Response(status=status, text=text if text.endswith("\n") else text + "\n")


def empty_response(status: int) -> web.Response:
    return web.Response(status=status)


class HttpApi:
    """The aiohttp handlers; one instance per process."""

    def __init__(self, service: Service, config: NodeConfig) -> None:
        self.service = service
        self.config = config
        self.queue = WriteQueue(self._flush_queue)
        self.started = time.time()
        self.routes: dict[str, tuple[frozenset[str], Handler]] = {
            "/db/execute": (frozenset({"POST"}), self.execute),
            "/db/query": (frozenset({"GET", "POST"}), self.query),
            "/status": (frozenset({"GET", "HEAD"}), self.status),
            "/nodes": (frozenset({"GET", "HEAD"}), self.nodes),
            "/readyz": (frozenset({"GET", "HEAD"}), self.readyz),
            "/leader": (frozenset({"GET", "HEAD"}), self.leader),
            "/db/backup": (frozenset({"GET"}), self.backup),
            "/db/sql": (frozenset({"GET", "POST"}), self.sql),
            "/db/request": (frozenset({"POST"}), self.unified),
            "/debug/vars": (frozenset({"GET"}), self.debug_vars),
            "/db/load": (frozenset({"POST"}), self.load),
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.api.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        response = await self._dispatch(request)
        response.headers[VERSION_HEADER] = f"v{__version__}"
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={
                "Access-Control-Allow-Methods": "OPTIONS, GET, POST",
                "Access-Control-Allow-Headers": "Content-Type"})
        route = self.routes.get(request.path)
        if route is None:
            return empty_response(404)
        methods, handler = route
        if request.method not in methods:
            return web.Response(status=405, headers={"Allow": ", ".join(sorted(methods))})
        try:
            return await handler(request)
        except ApiError as exc:
            return self._error(request, exc)

    def _error(self, request: web.Request, exc: ApiError) -> web.Response:
        if isinstance(exc, BadRequest):
            return text_response(400, exc.message)
        if isinstance(exc, TooLarge):
            response = text_response(413, exc.message)
            response.force_close()  # the rest of the body is never read
            return response
        if isinstance(exc, NotLeader):
            peer = self.config.peer(exc.leader) if exc.leader else None
            if peer is not None and "redirect" in request.query:
                location = f"http://{peer.http}{request.path}"
                if request.query_string:
                    location += f"?{request.query_string}"
                return web.Response(status=301, headers={"Location": location})
            return text_response(503, LEADER_NOT_FOUND)
        if isinstance(exc, Unavailable):
            return text_response(503, exc.message)
        pretty = "pretty" in request.query
        # A full disk is a 503 (try again later, or elsewhere) in rqlite's JSON error shape.
        return web.Response(body=dumps({"results": [], "error": exc.message}, pretty),
                            status=503 if isinstance(exc, DiskFull) else 200,
                            content_type=JSON_TYPE, charset="utf-8")

    # == /db ===================================================================================
    async def execute(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        self._check_length(request)
        if params.queue:
            return await self._queued(request, params)
        with self.service.admit():
            statements = self._statements(request, await self._read_body(request))
            self._check_pragmas(statements)
            start = time.perf_counter()
            outcome = await self.service.execute(self._request(statements, params))
            return self._results(outcome, params, start)

    async def _queued(self, request: web.Request, params: Params) -> web.StreamResponse:
        """rqlite queued writes (§8.1): answered at once with a sequence number."""
        body = await self._read_body(request)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("invalid JSON body") from None
        if doc == [] and params.wait:
            statements: list[Statement] = []  # a flush barrier
        else:
            statements = parse_body(doc, self.config.api.max_statements)
        self._check_pragmas(statements)
        if not params.noleader:
            leader = await self.service.current_leader(min(self.service.config.api.request_timeout_ms / 1000, 2.0))
            if not leader:
                raise NotLeader(LEADER_NOT_FOUND)
        req = self._request(statements, params)
        seq = self.queue.enqueue(self.service.rewritten(req, read_only=False))
        if params.wait:
            timeout = params.timeout or self.config.api.request_timeout_ms / 1000
            if not await self.queue.wait(seq, timeout):
                return text_response(408, "queue wait timeout")
        return json_response({"results": [], "sequence_number": seq}, params)

    async def _flush_queue(self, statements: list[Statement]) -> object:
        req = Request(statements=statements, deadline=self.service.deadline(None),
                      options=ClientOptions(norwrandom=True, norwtime=True))  # rewritten when queued
        return await self.service.execute(req)

    async def unified(self, request: web.Request) -> web.StreamResponse:
        """rqlite /db/request: reads at the requested level, anything that writes via the log."""
        params = parse_params(request.query)
        self._check_length(request)
        if params.queue:
            raise BadRequest("queued writes are not supported by the unified endpoint")
        with self.service.admit():
            body = await self._read_body(request)
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BadRequest("invalid JSON body") from None
            statements = parse_body(doc, self.config.api.max_statements)
            self._check_pragmas(statements)
            start = time.perf_counter()
            req = self._request(statements, params)
            read_only = params.level != "strong" and await asyncio.to_thread(
                reads.all_read_only, str(self.config.db_path), [s.sql for s in statements])
            if read_only:
                await self._check_freshness(params)
                outcome = await self.service.query(req)
            else:
                outcome = await self.service.execute(req)
            return self._results(outcome, params, start)

    @staticmethod
    def _check_pragmas(statements: list[Statement]) -> None:
        if any(disallowed_pragma(s.sql) for s in statements):
            raise ApiError("disallowed pragma")

    async def _check_freshness(self, params: Params) -> None:
        """rqlite level=none + freshness: refuse a read from a node that lost touch with the
        leader, and with freshness_strict also one whose data lags (Service.check_freshness)."""
        if params.level != "none" or params.freshness is None or params.freshness <= 0:
            return
        timeout = params.timeout or self.config.api.request_timeout_ms / 1000
        await self.service.check_freshness(params.freshness, params.freshness_strict, timeout)

    async def query(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        get = request.method == "GET"
        q = self._q(request) if get else ""
        if not get:
            self._check_length(request)
        with self.service.admit():
            if get:
                statements = [Statement(q)]
            else:
                statements = self._statements(request, await self._read_body(request))
            self._check_pragmas(statements)
            await self._check_freshness(params)
            start = time.perf_counter()
            outcome = await self.service.query(self._request(statements, params))
            return self._results(outcome, params, start)

    @staticmethod
    def _q(request: web.Request) -> str:
        q = request.query.get("q")
        if q is None:
            raise BadRequest("bad query GET request: use ?q=<sql> or POST a JSON body")
        if not q:
            raise BadRequest("query parameter not set")
        return q

    def _request(self, statements: list[Statement], params: Params) -> Request:
        return Request(statements=statements, deadline=self.service.deadline(params.timeout),
                       level=params.level, options=_options(params), redirect=params.redirect)

    def _check_length(self, request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > self.config.api.max_body_bytes:
            raise TooLarge(f"request body too large: {length} > {self.config.api.max_body_bytes} bytes")

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.api.max_body_bytes
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                raise TooLarge(f"request body too large: more than {limit} bytes")
        return bytes(body)

    def _statements(self, request: web.Request, body: bytes) -> list[Statement]:
        if request.content_type.startswith("text/plain"):
            try:
                return [Statement(body.decode())]
            except UnicodeDecodeError:
                raise BadRequest("invalid request: body is not UTF-8") from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("invalid JSON body") from None
        return parse_body(doc, self.config.api.max_statements)

    def _results(self, outcome: Outcome, params: Params, start: float) -> web.Response:
        results = outcome.results
        doc: dict[str, Any] = {"results": results}
        if params.timings:
            elapsed = time.perf_counter() - start
            for result in results:
                if isinstance(result, dict) and "time" not in result:
                    result["time"] = elapsed / max(1, len(results))
            doc["time"] = elapsed
        if params.raft_index and outcome.raft_index:
            doc["raft_index"] = outcome.raft_index
        response = json_response(doc, params)
        peer = self.config.peer(outcome.served_by)
        if peer is not None:
            response.headers[SERVED_BY_HEADER] = peer.http
        return response

    async def sql(self, request: web.Request) -> web.StreamResponse:
        """rqlite v9.4 /db/sql: how each statement would be rewritten; never touches the DB."""
        params = parse_params(request.query)
        if request.method == "GET":
            statements = [Statement(self._q(request))]
        else:
            self._check_length(request)
            statements = self._statements(request, await self._read_body(request))
        start = time.perf_counter()
        results: list[Any] = [explain_rewrite(s.sql, random=not params.norwrandom, time=not params.norwtime)
                              for s in statements]
        doc: dict[str, Any] = {"results": results}
        if params.timings:
            doc["time"] = time.perf_counter() - start
        return json_response(doc, params)

    # == backup and load =====================================================================
    async def backup(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        fmt = (request.query.get("fmt") or "binary").lower()  # rqlite: unknown means binary
        if "vacuum" in request.query and fmt == "sql":
            raise BadRequest("vacuum is not supported with the SQL format")
        path = str(self.config.db_path)
        with self.service.admit():
            if "noleader" not in request.query:
                # rqlite backs up the leader's copy: redirect there if asked, else serve this
                # node's copy once it has applied everything committed so far
                leader = await self.service.current_leader(2.0)
                if leader != self.config.id:
                    if not leader:
                        raise NotLeader(LEADER_NOT_FOUND)
                    if "redirect" in request.query:
                        raise NotLeader("not leader", leader=leader)
                    synced, line = await self.service.sync_check(params.timeout or 5.0)
                    if not synced:
                        raise Unavailable(line.removeprefix("[+]").strip())
            if fmt == "sql":
                text = await asyncio.to_thread(backup.dump_sql, path)
                return web.Response(body=text.encode(), content_type="application/sql")
            data = await asyncio.to_thread(backup.backup_bytes, path)
            return web.Response(body=data, content_type="application/octet-stream")

    async def load(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        self._check_length(request)
        with self.service.admit():
            body = await self._read_body(request)
            try:
                statements = await asyncio.to_thread(backup.load_statements, body, str(self.config.db_path))
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            start = time.perf_counter()
            if not statements:
                return self._results(Outcome([], 0, self.config.id), params, start)
            req = self._request(statements, params)
            req.options = replace(req.options, transaction=True)
            outcome = await self.service.execute(req)
            if backup.is_sqlite_file(body):
                outcome = Outcome([], outcome.raft_index, outcome.served_by)
            return self._results(outcome, params, start)

    # == node-local endpoints ==================================================================
    async def status(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        doc: Any = await self.service.status_document()
        key = request.query.get("key")
        if key:
            for part in key.split("."):
                doc = doc.get(part, {}) if isinstance(doc, dict) else {}
        return json_response(doc, params)

    async def nodes(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        nodes = await self.service.nodes(params.timeout or DEFAULT_NODES_TIMEOUT_S)
        if request.query.get("ver") == "2":
            return json_response({"nodes": sorted(nodes, key=lambda n: int(n["id"]))}, params)
        return json_response({n["id"]: n for n in nodes}, params)

    async def leader(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        nodes = await self.service.nodes(params.timeout or DEFAULT_NODES_TIMEOUT_S)
        leader = next((n for n in nodes if n["leader"]), None)
        if leader is None:
            return text_response(503, LEADER_NOT_FOUND)
        return json_response(leader, params)

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        ready, text = await self.service.readiness(noleader="noleader" in request.query)
        if ready and "sync" in request.query and "noleader" not in request.query:
            synced, line = await self.service.sync_check(params.timeout or 5.0)
            text += line
            ready = synced
        return web.Response(status=200 if ready else 503, text=text)

    async def debug_vars(self, request: web.Request) -> web.StreamResponse:
        """rqlite's expvar page: counters of this process."""
        params = parse_params(request.query)
        stats = self.queue.stats
        doc: dict[str, Any] = {
            "cmdline": sys.argv,
            "http": {"in_flight": self.service.in_flight, "uptime_s": time.time() - self.started},
            "queue": {"queued": stats.queued, "flushes": stats.flushes, "statements": stats.statements,
                      "failed_flushes": stats.failed_flushes, "dropped": stats.dropped,
                      "sequence_number": stats.sequence_number},
            "store": {"leader_cache": {"leader": self.service.leader_cache.leader,
                                       "term": self.service.leader_cache.term}},
        }
        key = request.query.get("key")
        if key:
            for part in key.split("."):
                doc = doc.get(part, {}) if isinstance(doc, dict) else {}
        return json_response(doc, params)
