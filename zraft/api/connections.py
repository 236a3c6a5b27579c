"""Every HTTP connection of the api process, bounded in time and in number.

A client can hold a connection open without ever finishing a request, or never read what it
is sent; 20,000 such sockets once used up the api's file descriptors and made the node
unreachable. `GuardedServer` closes them (a header timeout, an idle timeout) and, at a cap,
makes room for a new client by closing the idlest connection, so that no number of silent
sockets can lock a client out. aiohttp's noise about malformed requests (the client's doing)
is kept for DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Connection: TypeAlias = RequestHandler  # aiohttp's protocol object, one per connection


class _ClientFaults(logging.Filter):
    """aiohttp logs a malformed request (a bad request line or header, broken chunked framing
    or compression, a client gone mid-body) at ERROR with a traceback. Those are the
    client's doing, and anyone could fill the log with them: they are kept for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | RequestPayloadError | ConnectionError):
            return SERVER_LOG.isEnabledFor(logging.DEBUG)
        return True


SERVER_LOG = logging.getLogger("zraft.api.http.server")
SERVER_LOG.addFilter(_ClientFaults())


class GuardedServer(web.Server):
    """aiohttp's low-level server, with every connection bounded in time and in number.

    aiohttp alone closes a connection only when it has waited `keepalive_timeout` for a
    request (a new one that never sends a byte only since aio-libs/aiohttp#13681, in 3.14),
    with no separate header timeout, no cap on connections and nothing for a client that
    stops reading its response. Each connection here is in one of three states, kept in
    insertion-ordered tables so that a sweep (a few times per timeout) and an eviction only
    ever look at the oldest entries:
    - `_new`: accepted, no complete request header yet; closed `header_timeout_s` after
      accept (a silent socket, a slow-loris header);
    - `_busy`: a request is being handled (its own deadline bounds it, the body's read too);
    - `_idle`: the handler has answered; the response is written, then the connection
      waits for the next request; closed `idle_timeout_s` after the answer, or, while a
      response is still unwritten, after an idle timeout without any of it being read.
    At `max_connections`, each accepted connection first closes the idlest one: the oldest
    idle, else the oldest new (never itself, never a busy one). A client that connects and
    sends its request at once is therefore never the one closed, whatever the flood; when
    every other connection is busy the cap is exceeded (counted) rather than refusing, and
    busy connections are bounded by admission (api.max_in_flight) and deadlines anyway.
    A connection with unsent data is aborted (RST), since a graceful close would wait for
    a client that does not read; any other is closed (FIN).

    A subclass of the server rather than a watcher of `connections`: the server's own
    `connection_made`/`connection_lost` callbacks and the request handler it calls are the
    only places that see every transition, and this keeps aiohttp's protocol untouched.
    """

    def __init__(self, handler: Handler, *, max_connections: int, header_timeout_s: float,
                 idle_timeout_s: float, **kwargs: Any) -> None:
        # aiohttp's own idle close stays as a fallback, later than ours so that ours is counted
        kwargs.setdefault("logger", SERVER_LOG)
        super().__init__(self._tracked(handler), keepalive_timeout=2 * idle_timeout_s, **kwargs)
        self._clock = asyncio.get_running_loop()
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._new: dict[Connection, float] = {}
        self._busy: set[Connection] = set()
        self._idle: dict[Connection, tuple[float, int]] = {}  # since, unsent bytes then
        self._timer: asyncio.TimerHandle | None = None
        self.counts = {"header_timeouts": 0, "idle_timeouts": 0, "evicted": 0, "over_cap": 0}

    @property
    def open_count(self) -> int:
        return len(self._new) + len(self._busy) + len(self._idle)

    def stats(self) -> dict[str, int]:
        return {"open": self.open_count, "new": len(self._new), "busy": len(self._busy),
                "idle": len(self._idle), "max": self.max_connections, **self.counts}

    def _tracked(self, handler: Handler) -> Handler:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            self._new.pop(protocol, None)
            self._idle.pop(protocol, None)
            self._busy.add(protocol)
            try:
                return await handler(request)
            finally:
                if protocol in self._busy:  # else the connection is gone
                    self._busy.discard(protocol)
                    self._idle[protocol] = (self._clock.time(), -1)
        return handle

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._new[handler] = self._clock.time()
        if self.open_count > self.max_connections:
            victim = next(iter(self._idle), None) or next((p for p in self._new if p is not handler), None)
            if victim is None:
                self.counts["over_cap"] += 1
            else:
                self.counts["evicted"] += 1
                self._close(victim)
        if self._timer is None:
            tick = min(self.header_timeout_s, self.idle_timeout_s) / 4
            self._timer = self._clock.call_later(min(1.0, max(0.02, tick)), self._sweep)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._forget(handler)

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await super().shutdown(timeout)

    def _forget(self, protocol: Connection) -> None:
        self._new.pop(protocol, None)
        self._busy.discard(protocol)
        self._idle.pop(protocol, None)

    def _close(self, protocol: Connection) -> None:
        self._forget(protocol)
        transport = protocol.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()
        else:
            protocol.force_close()

    def _sweep(self) -> None:
        self._timer = None
        now = self._clock.time()
        while self._new:
            protocol, since = next(iter(self._new.items()))
            if now - since < self.header_timeout_s:
                break
            self.counts["header_timeouts"] += 1
            self._close(protocol)
        while self._idle:
            protocol, (since, unsent) = next(iter(self._idle.items()))
            if now - since < self.idle_timeout_s:
                break
            transport = protocol.transport
            left = transport.get_write_buffer_size() if transport is not None else 0
            if left and (unsent < 0 or left < unsent):  # still being read: give it another period
                del self._idle[protocol]
                self._idle[protocol] = (now, left)
                continue
            self.counts["idle_timeouts"] += 1
            self._close(protocol)
        if self.open_count:
            tick = min(self.header_timeout_s, self.idle_timeout_s) / 4
            self._timer = self._clock.call_later(min(1.0, max(0.02, tick)), self._sweep)
