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
  other failure 200 `{"results": [], "error": "..."}` as rqlite does;
- every response carries X-RQLITE-VERSION; served requests carry X-RQLITE-SERVED-BY (the
  HTTP address of the node that executed them).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from zraft import __version__
from zraft.api.errors import (
    LEADER_NOT_FOUND,
    ApiError,
    BadRequest,
    NotLeader,
    TooLarge,
    Unavailable,
)
from zraft.api.service import LEVELS, Outcome, Request, Service
from zraft.api.statements import parse_body
from zraft.config import NodeConfig
from zraft.store.command import Statement

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
        qualify_columns="qualify_columns" in query, level=level, timeout=timeout,
        db_timeout=durations["db_timeout"],
    )


def _options(params: Params) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in ("associative", "blob_array", "timings", "qualify_columns"):
        if getattr(params, name):
            options[name] = True
    if params.db_timeout:
        options["db_timeout_ms"] = max(1, int(params.db_timeout * 1000))
    return options


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
        self.routes: dict[str, tuple[frozenset[str], Handler]] = {
            "/db/execute": (frozenset({"POST"}), self.execute),
            "/db/query": (frozenset({"GET", "POST"}), self.query),
            "/status": (frozenset({"GET", "HEAD"}), self.status),
            "/nodes": (frozenset({"GET", "HEAD"}), self.nodes),
            "/readyz": (frozenset({"GET", "HEAD"}), self.readyz),
            "/leader": (frozenset({"GET", "HEAD"}), self.leader),
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
        return web.Response(body=dumps({"results": [], "error": exc.message}, pretty),
                            content_type=JSON_TYPE, charset="utf-8")

    # == /db ===================================================================================
    async def execute(self, request: web.Request) -> web.StreamResponse:
        params = parse_params(request.query)
        self._check_length(request)
        with self.service.admit():
            statements = self._statements(request, await self._read_body(request))
            start = time.perf_counter()
            outcome = await self.service.execute(self._request(statements, params))
            return self._results(outcome, params, start)

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
                       transaction=params.transaction, level=params.level,
                       options=_options(params), redirect=params.redirect)

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
        ready, text = await self.service.readiness(noleader="noleader" in request.query)
        return web.Response(status=200 if ready else 503, text=text)
