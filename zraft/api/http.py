"""rqlite's HTTP API on aiohttp: routing, query parameters, bodies, status codes, JSON.

Rules of this module:
- it is an adapter only: request logic lives in zraft.api.service;
- routes and methods are exact (ROUTES); an unknown path is 404 and a wrong method 405, both
  with empty bodies, as rqlite answers them; OPTIONS on any path is a 200 CORS pre-flight;
- query parameters are flags (presence matters, value ignored), durations are Go durations
  ("500ms", "2s", "1m30s") of at most config.api.max_duration_ms (one hour by default), so
  that no deadline or wire field can overflow; anything invalid is a 400 with a one-line
  text body;
- a body larger than config.api.max_body_bytes is a 413 decided from Content-Length before
  reading anything, and otherwise by a capped read; a body must arrive within the request's
  timeout, at least api.request_timeout_ms (408 otherwise), and one that cannot be decoded
  (chunked framing, gzip) is
  a 400, both closing the connection; `Expect: 100-continue` is answered only once the
  request has been admitted and is about to read its body;
- no input gives a 500: an exception this module did not expect is logged, counted
  (/debug/vars http.internal_errors, which the fuzz tests require to stay 0) and answered as
  rqlite answers a failed request, 200 `{"results": [], "error": "internal error"}`;
- a 301 carries the query string exactly as the client sent it (still percent-encoded);
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
  it twice;
- /nodes, DELETE /remove and POST /leader are zraft.api.membership: /nodes lists the Raft
  configuration's members (`nonvoters` adds the learners), a change goes to the leader;
- connections are bounded (zraft.api.connections.GuardedServer): a header timeout, an idle timeout, and a cap on
  open connections at which a new one closes the idlest, so that no number of silent or
  idle sockets can use up the process's descriptors or lock a new client out;
- /db/request classifies with SQLite (zraft.store.reads, the node's one read/write
  classifier), /db/execute?queue uses zraft.api.queue, /db/backup zraft.api.backup_stream
  (a streamed response: its headers are set before they are sent), /db/load
  zraft.api.backup; statements are rewritten for determinism in zraft.api.service before
  they enter the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import apsw
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http import HttpVersion11
from aiohttp.web_protocol import RequestPayloadError

from zraft import __version__
from zraft.api import backup, loads
from zraft.api.backup_files import LOAD_PREFIX
from zraft.api.backup_stream import BackupSpec, Backups
from zraft.api.errors import (
    LEADER_NOT_FOUND,
    ApiError,
    BadRequest,
    DiskFull,
    NotLeader,
    TooLarge,
    Unavailable,
)
from zraft.api.connections import Handler
from zraft.api.params import Params, format_duration, parse_params
from zraft.api.membership import Membership, request_for
from zraft.api.service import Outcome, Request, Service
from zraft.api.queue import WriteQueue
from zraft.api.statements import disallowed_pragma, parse_body
from zraft.config import NodeConfig
from zraft.sql.rewrite import explain_rewrite
from zraft.store import reads
from zraft.wire.messages import ClientOptions
from zraft.wire.sql import Statement

log = logging.getLogger(__name__)

VERSION_HEADER = "X-RQLITE-VERSION"
SERVED_BY_HEADER = "X-RQLITE-SERVED-BY"
JSON_TYPE = "application/json"
DEFAULT_NODES_TIMEOUT_S = 2.0
SCRATCH_DIR = "tmp"
"""Backups' scratch files, under the node's data folder (zraft.api.backup_stream)."""


def scratch_dir(config: NodeConfig) -> Path:
    """Where backups copy the database: beside it, on its own file system."""
    return config.data_dir / SCRATCH_DIR



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


class BrokenBody(ApiError):
    """The request body could not be read: not in time (408) or not decodable (400). The
    connection is closed after the answer, since the rest of the stream cannot be trusted."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpApi:
    """The request handler (`dispatch`, for aiohttp's low-level server); one per process."""

    def __init__(self, service: Service, config: NodeConfig, membership: Membership) -> None:
        self.service = service
        self.config = config
        self.membership = membership
        self.queue = WriteQueue(self._flush_queue, capacity=config.api.max_queued_statements)
        self.backups = Backups(str(config.db_path), scratch_dir(config), config.api.max_concurrent_backups,
                               write_timeout_s=config.api.idle_timeout_ms / 1000)
        self.started = time.time()
        self.internal_errors = 0
        self.connection_stats: Callable[[], dict[str, int]] = dict
        """Counters of the HTTP connections, for /debug/vars (set by the process)."""
        self.routes: dict[str, tuple[frozenset[str], Handler]] = {
            "/db/execute": (frozenset({"POST"}), self.execute),
            "/db/query": (frozenset({"GET", "POST"}), self.query),
            "/status": (frozenset({"GET", "HEAD"}), self.status),
            "/nodes": (frozenset({"GET", "HEAD"}), self.nodes),
            "/readyz": (frozenset({"GET", "HEAD"}), self.readyz),
            "/leader": (frozenset({"GET", "HEAD", "POST"}), self.leader),
            "/remove": (frozenset({"DELETE"}), self.remove),
            "/db/backup": (frozenset({"GET"}), self.backup),
            "/db/sql": (frozenset({"GET", "POST"}), self.sql),
            "/db/request": (frozenset({"POST"}), self.unified),
            "/debug/vars": (frozenset({"GET"}), self.debug_vars),
            "/db/load": (frozenset({"POST"}), self.load),
            "/boot": (frozenset({"POST"}), self.boot),
            "/snapshot": (frozenset({"POST"}), self.snapshot),
        }

    async def close(self) -> None:
        """Stop the queue's flushing task (queued writes not yet flushed are dropped) and the
        backups' workers."""
        await self.queue.close()
        self.backups.close()

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            response = await self._dispatch(request)
        except Exception:  # noqa: BLE001 - the one place an unexpected failure is turned into an answer
            self.internal_errors += 1
            log.exception("internal error serving %s %s", request.method, request.path)
            response = self._error(request, ApiError("internal error"))
        if not response.prepared:  # a streamed response set its headers before sending them
            response.headers[VERSION_HEADER] = f"v{__version__}"
        return response

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
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
        expect = request.headers.get("Expect")
        if expect is not None and request.version >= HttpVersion11 and expect.lower() != "100-continue":
            return text_response(417, "unsupported Expect header: only 100-continue is")  # as Go's net/http
        try:
            return await handler(request)
        except ApiError as exc:
            return self._error(request, exc)

    def _error(self, request: web.BaseRequest, exc: ApiError) -> web.Response:
        if isinstance(exc, BadRequest):
            return text_response(400, exc.message)
        if isinstance(exc, TooLarge | BrokenBody):
            response = text_response(exc.status if isinstance(exc, BrokenBody) else 413, exc.message)
            response.force_close()  # the rest of the body is never read
            return response
        if isinstance(exc, NotLeader):
            peer = self.config.peer(exc.leader) if exc.leader else None
            if peer is not None and "redirect" in request.query:
                # rqlite: the leader, the path, and the query exactly as it was sent (RawQuery)
                location = f"http://{peer.http}{request.path}"
                if raw_query := request.rel_url.raw_query_string:
                    location += f"?{raw_query}"
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
    async def execute(self, request: web.BaseRequest) -> web.StreamResponse:
        params = self._params(request)
        self._check_length(request)
        if params.queue:
            return await self._queued(request, params)
        with self.service.admit():
            statements = self._statements(request, await self._read_body(request, params))
            self._check_pragmas(statements)
            start = time.perf_counter()
            outcome = await self.service.execute(self._request(statements, params))
            return self._results(outcome, params, start)

    async def _queued(self, request: web.BaseRequest, params: Params) -> web.StreamResponse:
        """rqlite queued writes (§8.1): answered at once with a sequence number."""
        with self.service.admit():  # for the time its body takes to arrive
            body = await self._read_body(request, params)
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

    async def unified(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite /db/request: reads at the requested level, anything that writes via the log."""
        params = self._params(request)
        self._check_length(request)
        if params.queue:
            raise BadRequest("queued writes are not supported by the unified endpoint")
        with self.service.admit():
            body = await self._read_body(request, params)
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BadRequest("invalid JSON body") from None
            statements = parse_body(doc, self.config.api.max_statements)
            self._check_pragmas(statements)
            start = time.perf_counter()
            req = self._request(statements, params)
            read_only = params.level != "strong" and await self._all_read_only(statements)
            if read_only:
                await self._check_freshness(params)
                outcome = await self.service.query(req)
            else:
                outcome = await self.service.execute(req)
            return self._results(outcome, params, start)

    async def _all_read_only(self, statements: list[Statement]) -> bool:
        """zraft.store.reads' verdict; a statement it cannot even hand to SQLite (apsw refuses
        a NUL character with ValueError) counts as a write, like one that does not compile:
        the log then gives it the store's own per-statement error on every node."""
        try:
            return await asyncio.to_thread(reads.all_read_only, str(self.config.db_path),
                                           [s.sql for s in statements])
        except (ValueError, apsw.Error, OSError):
            return False

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

    async def query(self, request: web.BaseRequest) -> web.StreamResponse:
        params = self._params(request)
        get = request.method == "GET"
        q = self._q(request) if get else ""
        if not get:
            self._check_length(request)
        with self.service.admit():
            if get:
                statements = [Statement(q)]
            else:
                statements = self._statements(request, await self._read_body(request, params))
            self._check_pragmas(statements)
            await self._check_freshness(params)
            start = time.perf_counter()
            outcome = await self.service.query(self._request(statements, params))
            return self._results(outcome, params, start)

    @staticmethod
    def _q(request: web.BaseRequest) -> str:
        q = request.query.get("q")
        if q is None:
            raise BadRequest("bad query GET request: use ?q=<sql> or POST a JSON body")
        if not q:
            raise BadRequest("query parameter not set")
        return q

    def _params(self, request: web.BaseRequest) -> Params:
        return parse_params(request.query, self.config.api.max_duration_ms / 1000)

    def _request(self, statements: list[Statement], params: Params) -> Request:
        return Request(statements=statements, deadline=self.service.deadline(params.timeout),
                       level=params.level, options=_options(params), redirect=params.redirect)

    def _check_length(self, request: web.BaseRequest) -> None:
        length = request.content_length
        if length is not None and length > self.config.api.max_body_bytes:
            raise TooLarge(f"request body too large: {length} > {self.config.api.max_body_bytes} bytes")

    async def _read_body(self, request: web.BaseRequest, params: Params) -> bytes:
        """The whole body, at most max_body_bytes of it, within the request's timeout (but
        never less than api.request_timeout_ms: a short timeout is meant for the work, not
        for a large upload). The work gets its own deadline once the body is in."""
        limit = self.config.api.max_body_bytes
        seconds = max(params.timeout or 0.0, self.config.api.request_timeout_ms / 1000)
        body = bytearray()
        try:
            async with asyncio.timeout(seconds):
                if request.version >= HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                while chunk := await request.content.readany():
                    body += chunk
                    if len(body) > limit:
                        raise TooLarge(f"request body too large: more than {limit} bytes")
        except TimeoutError:
            raise BrokenBody(408, f"request body not received within {format_duration(seconds)}") from None
        except (RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
            raise BrokenBody(400, f"invalid request body: {exc.__class__.__name__}") from None
        return bytes(body)

    def _statements(self, request: web.BaseRequest, body: bytes) -> list[Statement]:
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

    async def sql(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite v9.4 /db/sql: how each statement would be rewritten; never touches the DB."""
        params = self._params(request)
        if request.method == "GET":
            statements = [Statement(self._q(request))]
        else:
            self._check_length(request)
            statements = self._statements(request, await self._read_body(request, params))
        start = time.perf_counter()
        results: list[Any] = [self._explain(s.sql, params) for s in statements]
        doc: dict[str, Any] = {"results": results}
        if params.timings:
            doc["time"] = time.perf_counter() - start
        return json_response(doc, params)

    @staticmethod
    def _explain(sql: str, params: Params) -> dict[str, str]:
        try:
            return explain_rewrite(sql, random=not params.norwrandom, time=not params.norwtime)
        except ValueError as exc:  # apsw refuses to compile a NUL character: no grammar verdict
            return {"original": sql, "error": str(exc)}

    # == backup and load =====================================================================
    async def backup(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite's /db/backup, streamed from a scratch copy (zraft.api.backup_stream)."""
        params = self._params(request)
        spec = BackupSpec.from_query(request.query)
        with self.service.admit():
            await self._backup_here(request, params)
            headers = {VERSION_HEADER: f"v{__version__}", SERVED_BY_HEADER: self.config.me().http}
            return await self.backups.serve(request, spec, headers)

    async def _backup_here(self, request: web.BaseRequest, params: Params) -> None:
        """rqlite backs up the leader's copy: without `noleader`, a follower redirects there if
        asked, else serves its own copy once it has applied everything committed so far."""
        if "noleader" in request.query:
            return
        leader = await self.service.current_leader(2.0)
        if leader == self.config.id:
            return
        if not leader:
            raise NotLeader(LEADER_NOT_FOUND)
        if "redirect" in request.query:
            raise NotLeader("not leader", leader=leader)
        synced, line = await self.service.sync_check(params.timeout or 5.0)
        if not synced:
            raise Unavailable(line.removeprefix("[+]").strip())

    async def load(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite's /db/load: a SQLite file (told by its first bytes) goes through the log in
        chunks, whatever its size (zraft.api.loads); SQL text is one transaction, at most
        max_body_bytes."""
        params = self._params(request)
        with self.service.admit():
            prefix = await self._read_prefix(request, params, len(backup.SQLITE_MAGIC))
            if backup.is_sqlite_file(prefix):
                return await self._load_file(request, params, prefix, boot=False)
            self._check_length(request)
            body = prefix + await self._read_body(request, params)
            try:
                statements = backup.load_statements(body)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            start = time.perf_counter()
            if not statements:
                return self._results(Outcome([], 0, self.config.id), params, start)
            req = self._request(statements, params)
            req.options = replace(req.options, transaction=True)
            return self._results(await self.service.execute(req), params, start)

    async def boot(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite's /boot: a SQLite file into a single-node cluster (503 on a cluster of more
        voters). Here it takes the same chunked path through the log as /db/load, which is
        as fast as the disk and keeps every guarantee of a write; the log's copy is dropped
        by the compaction the load asks for."""
        params = self._params(request)
        with self.service.admit():
            prefix = await self._read_prefix(request, params, 32)
            if not backup.is_sqlite_file(prefix):
                raise BadRequest("invalid SQLite data")
            status = await self.service.raft_status(DEFAULT_NODES_TIMEOUT_S)
            if len(status.voters) != 1 or status.leader != self.config.id:
                raise Unavailable("/boot needs a single-node cluster, and this node as its leader")
            return await self._load_file(request, params, prefix, boot=True)

    async def _read_prefix(self, request: web.BaseRequest, params: Params, size: int) -> bytes:
        """The first ``size`` bytes of the body (fewer if it is shorter), to tell a SQLite
        file from SQL text before deciding how to read the rest."""
        seconds = max(params.timeout or 0.0, self.config.api.request_timeout_ms / 1000)
        try:
            async with asyncio.timeout(seconds):
                if request.version >= HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                prefix = b""
                while len(prefix) < size and (piece := await request.content.read(size - len(prefix))):
                    prefix += piece
                return prefix
        except TimeoutError:
            raise BrokenBody(408, f"request body not received within {format_duration(seconds)}") from None
        except (RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
            raise BrokenBody(400, f"invalid request body: {exc.__class__.__name__}") from None

    async def _load_file(self, request: web.BaseRequest, params: Params, prefix: bytes, boot: bool) -> web.StreamResponse:
        limit = self.config.api.max_load_bytes
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"load too large: {request.content_length} > {limit} bytes")
        idle = max(params.timeout or 0.0, self.config.api.request_timeout_ms / 1000)
        scratch = scratch_dir(self.config)
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / f"{LOAD_PREFIX}{os.getpid()}-{id(request):x}.sqlite"  # swept at start if left
        try:
            try:
                spooled = await loads.spool(request.content, prefix, path, limit, idle)
            except TimeoutError:
                raise BrokenBody(408, f"load body stalled: no data for {format_duration(idle)}") from None
            except (RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
                raise BrokenBody(400, f"invalid request body: {exc.__class__.__name__}") from None
            await loads.check(spooled)
            start = time.perf_counter()
            timeout = params.timeout or self.config.api.request_timeout_ms / 1000
            leader = await self.service.current_leader(2.0)
            if leader != self.config.id and not boot:
                return await self._forward_load(request, spooled, leader, timeout)
            results = await loads.through_log(spooled, self.service.raft.propose, self.service.store.wait_applied,
                                              timeout)
            with contextlib.suppress(ApiError):  # the log's copy of the file goes; the load stands either way
                await self.service.snapshot(0 if boot else -1, timeout)
            if boot and not any(isinstance(r, dict) and r.get("error") for r in results):
                return web.Response(status=200)  # rqlite's /boot answers an empty 200
            return self._results(Outcome(results, 0, self.config.id), params, start)
        finally:
            loads.remove(path)

    async def _forward_load(self, request: web.BaseRequest, spooled: loads.Spooled, leader: int,
                            timeout: float) -> web.StreamResponse:
        peer = self.config.peer(leader) if leader else None
        if peer is None or request.headers.get(loads.FORWARDED_HEADER):
            raise NotLeader(LEADER_NOT_FOUND)
        if "redirect" in request.query:
            raise NotLeader("not leader", leader=leader)
        status, body, content_type = await loads.forward(spooled, peer.http, request.query_string, timeout)
        return web.Response(status=status, body=body, content_type=content_type or None)

    # == node-local endpoints ==================================================================
    async def status(self, request: web.BaseRequest) -> web.StreamResponse:
        params = self._params(request)
        doc: Any = await self.service.status_document()
        key = request.query.get("key")
        if key:
            for part in key.split("."):
                doc = doc.get(part, {}) if isinstance(doc, dict) else {}
        return json_response(doc, params)

    async def nodes(self, request: web.BaseRequest) -> web.StreamResponse:
        params = self._params(request)
        nodes = await self.membership.nodes(params.timeout or DEFAULT_NODES_TIMEOUT_S, "nonvoters" in request.query)
        if request.query.get("ver") == "2":
            return json_response({"nodes": sorted(nodes, key=lambda n: int(n["id"]))}, params)
        return json_response({n["id"]: n for n in nodes}, params)

    async def leader(self, request: web.BaseRequest) -> web.StreamResponse:
        """GET: the leader's node object. POST: rqlite's leadership transfer, to the node of
        an optional `{"id": ...}` body (read only when the Content-Type is JSON) or to the
        most up-to-date voter; `wait` answers once another node leads."""
        params = self._params(request)
        if request.method == "POST":
            self._check_length(request)
            body = await self._read_body(request, params)
            target = 0
            if body.strip() and request.content_type == "application/json":
                target = _node_id_body(body, required=False)
            req = request_for(self.service.deadline(params.timeout), redirect=params.redirect)
            with self.service.admit():
                await self.membership.transfer(target, "wait" in request.query, req)
            return web.Response(status=200)
        nodes = await self.membership.nodes(params.timeout or DEFAULT_NODES_TIMEOUT_S, nonvoters=True)
        leader = next((n for n in nodes if n["leader"]), None)
        if leader is None:
            return text_response(503, LEADER_NOT_FOUND)
        return json_response(leader, params)

    async def remove(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite's DELETE /remove with a `{"id": ...}` body: take that node out of the
        cluster (answered once the change is committed); a node that is not a member is a
        success that changes nothing, as in rqlite."""
        params = self._params(request)
        self._check_length(request)
        node_id = _node_id_body(await self._read_body(request, params), required=True)
        req = request_for(self.service.deadline(params.timeout), redirect=params.redirect)
        with self.service.admit():
            await self.membership.remove(node_id, req)
        return web.Response(status=200)

    async def snapshot(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite's POST /snapshot[?trailing_logs=N]: compact this node's log now; 200 when
        entries were dropped, 204 when there was nothing to drop."""
        params = self._params(request)
        text = request.query.get("trailing_logs")
        if text is not None and not (text.isdigit() and int(text) < 1 << 62):
            raise BadRequest(f"trailing_logs must be a non-negative integer, got {text!r}")
        trailing = int(text) if text is not None else -1
        with self.service.admit():
            changed = await self.service.snapshot(trailing, params.timeout or 10.0)
        return web.Response(status=200 if changed else 204)

    async def readyz(self, request: web.BaseRequest) -> web.StreamResponse:
        params = self._params(request)
        ready, text = await self.service.readiness(noleader="noleader" in request.query)
        if ready and "sync" in request.query and "noleader" not in request.query:
            synced, line = await self.service.sync_check(params.timeout or 5.0)
            text += line
            ready = synced
        return web.Response(status=200 if ready else 503, text=text)

    async def debug_vars(self, request: web.BaseRequest) -> web.StreamResponse:
        """rqlite's expvar page: counters of this process."""
        params = self._params(request)
        stats = self.queue.stats
        doc: dict[str, Any] = {
            "cmdline": sys.argv,
            "http": {"in_flight": self.service.in_flight, "uptime_s": time.time() - self.started,
                     "internal_errors": self.internal_errors, "connections": self.connection_stats()},
            "queue": {"queued": stats.queued, "flushes": stats.flushes, "statements": stats.statements,
                      "failed_flushes": stats.failed_flushes, "dropped": stats.dropped,
                      "sequence_number": stats.sequence_number},
            "store": {"leader_cache": {"leader": self.service.leader_cache.leader,
                                       "term": self.service.leader_cache.term}},
            "backup": self.backups.stats(),
        }
        key = request.query.get("key")
        if key:
            for part in key.split("."):
                doc = doc.get(part, {}) if isinstance(doc, dict) else {}
        return json_response(doc, params)


def _node_id_body(body: bytes, required: bool) -> int:
    """The node id of a `{"id": ...}` body (rqlite's ids are strings: "2" and 2 both do)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid JSON body") from None
    if not isinstance(doc, dict) or set(doc) != {"id"}:
        if not required and doc == {}:
            return 0
        raise BadRequest('the body must be a JSON object with exactly one key, "id"')
    value = doc["id"]
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or not 0 < int(text) < 1 << 62:
        raise BadRequest(f"invalid node id {value!r}: node ids are positive integers")
    return int(text)
