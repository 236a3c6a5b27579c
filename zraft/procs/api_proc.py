"""The client API process: rqlite's HTTP API and zraft's native ZeroMQ endpoint, on asyncio.

One event loop (uvloop when installed) drives aiohttp and every ZeroMQ socket (through
`loop.add_reader`, see zraft.api.zmq_client):
- DEALER -> config.raft_rpc   (Propose, ReadIndex, StatusRequest)
- DEALER -> config.store_rpc  (WaitApplied, Query, StatusRequest)
- SUB    -> config.raft_pub   (CommitNotice: the leader and term, for weak reads)
- ROUTER on me().api_zmq      (ClientExecute, ClientQuery, StatusRequest: forwarding + native)
- DEALER -> each peer's api_zmq, made on first use (forwarding to the leader)

HTTP connections are bounded (zraft.api.connections.GuardedServer): header and idle timeouts, and
api.max_connections open at once. At start the process raises its RLIMIT_NOFILE soft limit to
the hard limit (logged), and lowers the connection cap, with a warning, when the descriptors
left after FD_RESERVE and accept bursts would not hold it (connection_cap): the cap, not
the kernel, must be what a flood of sockets meets, or accept() fails with EMFILE and every
client is locked out.

Lifecycle: SIGTERM or SIGINT -> stop accepting (HTTP listener and native endpoint), let the
requests in flight finish within their deadlines, close every socket with LINGER=0, return
0. A failure to start (a port in use, a bad address) or a crash returns 1, so that the
supervisor restarts the process.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import resource
import signal
from collections.abc import Coroutine
from typing import Any

import zmq
from aiohttp import web

from zraft.api.connections import GuardedServer
from zraft.api.http import HttpApi
from zraft.api.membership import Membership
from zraft.api.native import NativeHandler
from zraft.api.service import Service
from zraft.api.zmq_client import (
    AsyncRpcClient,
    AsyncRpcServer,
    AsyncSubscriber,
    PeerClients,
    ZmqRaftClient,
    ZmqStoreClient,
)
from zraft.config import NodeConfig
from zraft.procs.shell import profiled
from zraft.transport.sockets import from_own_address, native_max_frame_bytes

log = logging.getLogger(__name__)

FD_RESERVE = 256
"""Descriptors kept for everything but HTTP connections: ZeroMQ sockets and their I/O
threads, peers, SQLite files opened for /db/request, /db/backup and /db/load, logs."""
HTTP_BACKLOG = 512
"""listen() backlog (the kernel caps it at net.core.somaxconn): a burst of connections waits
in the kernel's queue instead of having its SYNs dropped and retried a second later."""


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised RLIMIT_NOFILE soft limit from %d to %d", soft, target)
        except (ValueError, OSError) as exc:
            log.warning("could not raise RLIMIT_NOFILE soft limit from %d to %d: %s", soft, target, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def listen_backlog(fd_limit: int) -> int:
    """HTTP_BACKLOG, smaller under a small descriptor limit."""
    if fd_limit == resource.RLIM_INFINITY:
        return HTTP_BACKLOG
    return min(HTTP_BACKLOG, max(64, fd_limit // 16))


def connection_cap(wanted: int, fd_limit: int) -> int:
    """api.max_connections, lowered when the descriptors would not hold that many. Above the
    cap sit FD_RESERVE and twice the backlog: asyncio accepts up to a backlog's worth of
    connections in one go before the server sees any of them, and the descriptor of each
    connection they evict is released a loop turn later (measured: 11,639 descriptors at the
    peak of a 20,000-socket flood against a cap of 10,000 with a backlog of 1024)."""
    if fd_limit == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, fd_limit - FD_RESERVE - 2 * listen_backlog(fd_limit)))


def split_host_port(address: str) -> tuple[str, int]:
    """"host:port" (or "[v6]:port") -> (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


class ApiProcess:
    """Everything the API process owns. Start, then close, from one running event loop."""

    def __init__(self, config: NodeConfig, http_port: int | None = None) -> None:
        self.config = config
        self._http_port_override = http_port
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._rpcs: list[AsyncRpcClient] = []
        self._subscriber: AsyncSubscriber | None = None
        self._native: AsyncRpcServer | None = None
        self._peers: PeerClients | None = None
        self._runner: web.ServerRunner | None = None
        self._http: HttpApi | None = None
        self.service: Service | None = None
        self.membership: Membership | None = None
        self.http_port = 0

    async def start(self) -> None:
        config = self.config
        raft_rpc = AsyncRpcClient(self.ctx, config.raft_rpc)
        store_rpc = AsyncRpcClient(self.ctx, config.store_rpc)
        self._rpcs = [raft_rpc, store_rpc]
        own = config.me().api_zmq
        self._peers = PeerClients(self.ctx, {p.id: from_own_address(p.api_zmq, own)
                                             for p in config.peers if p.id != config.id},
                                  max_request_bytes=native_max_frame_bytes(config.api))
        raft = ZmqRaftClient(raft_rpc)
        service = self.service = Service(config, raft, ZmqStoreClient(store_rpc), self._peers)
        membership = self.membership = Membership(service, raft, self._peers.get)
        if config.raft_pub:
            self._subscriber = AsyncSubscriber(self.ctx, config.raft_pub, service.on_notice)
        grace = config.api.request_timeout_ms / 1000 + 1
        self._http = HttpApi(service, config, membership)
        removed = self._http.backups.clean()
        if removed:
            log.info("removed %d scratch files left by an earlier backup in %s", removed, self._http.backups.scratch)
        fd_limit = raise_fd_limit()
        cap = connection_cap(config.api.max_connections, fd_limit)
        if cap < config.api.max_connections:
            log.warning("api.max_connections lowered from %d to %d: RLIMIT_NOFILE is %d",
                        config.api.max_connections, cap, fd_limit)
        # handler_cancellation: a client that goes away frees its admission slot at once
        server = GuardedServer(self._http.dispatch, max_connections=cap,
                               header_timeout_s=config.api.header_timeout_ms / 1000,
                               idle_timeout_s=config.api.idle_timeout_ms / 1000,
                               handler_cancellation=True, access_log=None)
        self._http.connection_stats = server.stats
        self._runner = web.ServerRunner(server, shutdown_timeout=grace)
        await self._runner.setup()
        host, port = split_host_port(config.me().http)
        if self._http_port_override is not None:
            port = self._http_port_override
        site = web.TCPSite(self._runner, host, port, reuse_address=True, backlog=listen_backlog(fd_limit))
        await site.start()
        sockets = self._runner.addresses
        self.http_port = sockets[0][1] if sockets else port
        # After the HTTP port: binding an ipc path takes it over from a process already
        # serving it, so a second copy of this process must fail on the TCP port first.
        self._native = AsyncRpcServer(self.ctx, config.me().api_zmq, NativeHandler(service, membership),
                                      max_frame_bytes=native_max_frame_bytes(config.api))
        log.info("api process for node %d serving http on %s:%d (at most %d connections, header "
                 "timeout %d ms, idle timeout %d ms) and native on %s", config.id, host, self.http_port,
                 cap, config.api.header_timeout_ms, config.api.idle_timeout_ms, config.me().api_zmq)

    async def close(self) -> None:
        """Hand the node's leadership over if it leads, stop accepting, finish what is in
        flight, close every socket (LINGER=0)."""
        if self.membership is not None:
            await self.membership.hand_off_before_close()
        grace = self.config.api.request_timeout_ms / 1000 + 1
        closing: list[Coroutine[Any, Any, None]] = []
        if self._runner is not None:
            closing.append(self._runner.cleanup())
        if self._native is not None:
            closing.append(self._native.close(grace))
        await asyncio.gather(*closing, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._subscriber is not None:
            self._subscriber.close()
        if self._peers is not None:
            self._peers.close()
        for rpc in self._rpcs:
            rpc.close()
        self.ctx.term()


async def serve(config: NodeConfig) -> int:
    """Run the process until SIGTERM/SIGINT; the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    process = ApiProcess(config)
    try:
        await process.start()
    except Exception:
        log.exception("api process for node %d failed to start", config.id)
        await process.close()
        return 1
    await stop.wait()
    log.info("api process for node %d stopping", config.id)
    await process.close()
    return 0


def run(config: NodeConfig) -> int:
    """Entry point for `zraft run api`: 0 after SIGTERM, non-zero on a fatal error."""
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        uvloop = None
    codes: list[int] = []

    def serve_loop() -> None:
        if uvloop is not None:
            codes.append(int(uvloop.run(serve(config))))
        else:
            codes.append(asyncio.run(serve(config)))
    try:
        profiled(serve_loop, config.id, "api")
        return codes[0]
    except Exception:
        log.exception("api process for node %d crashed", config.id)
        return 1
