"""Harness for the API process tests (no tests here): fake raft/store/peer servers speaking
the wire messages on real ZeroMQ sockets, and an ApiProcess running on its own event loop
thread. Every address is ipc:// in a short temporary folder or tcp on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from zraft.config import ApiSettings, NodeConfig, Peer
from zraft.procs.api_proc import ApiProcess
from zraft.store.command import Command, decode_command
from zraft.wire import decode, encode
from zraft.wire.messages import (
    AppliedResult,
    ClientExecute,
    ClientQuery,
    ClientResults,
    CommitNotice,
    Error,
    ErrorCode,
    Propose,
    Proposed,
    Query,
    QueryResult,
    RaftStatus,
    ReadIndex,
    ReadIndexReply,
    StatusReply,
    StatusRequest,
    StoreStatus,
    WaitApplied,
    WireMessage,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Delayed:
    """Reply after `seconds` (the fake server stays responsive meanwhile)."""

    seconds: float
    reply: WireMessage


Handler = Callable[[WireMessage], WireMessage | Delayed | None]


class FakeServer:
    """A ROUTER on its own thread: handler(msg) -> reply, Delayed(reply) or None (no reply)."""

    def __init__(self, address: str, handler: Handler) -> None:
        self.address = address
        self.handler = handler
        self.received: list[WireMessage] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)
        self._ready.set()
        later: list[tuple[float, list[bytes]]] = []
        try:
            while not self._stop.is_set():
                if sock.poll(10):
                    frames = sock.recv_multipart()
                    msg = decode(frames[1:])
                    assert isinstance(msg, WireMessage)
                    self.received.append(msg)
                    reply = self.handler(msg)
                    if isinstance(reply, Delayed):
                        later.append((time.monotonic() + reply.seconds, [frames[0], *encode(reply.reply)]))
                    elif reply is not None:
                        sock.send_multipart([frames[0], *encode(reply)])
                now = time.monotonic()
                for item in [x for x in later if x[0] <= now]:
                    later.remove(item)
                    sock.send_multipart(item[1])
        finally:
            sock.close(0)
            ctx.term()

    def of(self, cls: type) -> list[Any]:
        return [m for m in self.received if isinstance(m, cls)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class FakePublisher:
    """A PUB socket sending CommitNotices from a thread until stopped."""

    def __init__(self, address: str, leader: int, term: int = 1) -> None:
        self.address, self.leader, self.term = address, leader, term
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)
        try:
            for seq in itertools.count(1):
                if self._stop.wait(0.01):
                    break
                sock.send_multipart(encode(CommitNotice(epoch=1, seq=seq, commit=seq, term=self.term,
                                                        leader=self.leader)))
        finally:
            sock.close(0)
            ctx.term()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class FakeRaft:
    """The raft process as the API sees it: a log of proposals and a view of the leader."""

    def __init__(self, node_id: int, leader: int, term: int = 3) -> None:
        self.node_id, self.leader, self.term = node_id, leader, term
        self.log: dict[int, bytes] = {}
        self.read_index = 0
        self.propose_error: Error | None = None

    def handle(self, msg: WireMessage) -> WireMessage | Delayed | None:
        mid = getattr(msg, "id", 0)
        if isinstance(msg, StatusRequest):
            role = "leader" if self.leader == self.node_id else "follower"
            return RaftStatus(id=mid, node_id=self.node_id, role=role, term=self.term, vote=self.leader,
                              leader=self.leader, commit=len(self.log), raft_commit=len(self.log),
                              first_index=1, last_index=len(self.log), voters=[1, 2, 3], learners=[],
                              epoch=1, seq=0, pending_reads=0, disk_full="", vote_floor=[0, 0])
        if self.leader != self.node_id:
            return Error(id=mid, code=ErrorCode.NOT_LEADER, message="not the leader", leader=self.leader)
        if isinstance(msg, Propose):
            if self.propose_error is not None:
                return Error(id=mid, code=self.propose_error.code, message=self.propose_error.message)
            index = len(self.log) + 1
            self.log[index] = msg.data
            return Proposed(id=mid, index=index, term=self.term)
        if isinstance(msg, ReadIndex):
            return ReadIndexReply(id=mid, index=self.read_index or len(self.log))
        return Error(id=mid, code=ErrorCode.BAD_REQUEST, message=f"fake raft: {type(msg).__name__}")


def result_for(sql: str, params: Any, index: int) -> dict[str, Any]:
    head = sql.split()[0].upper()
    if head == "INSERT":
        return {"last_insert_id": index, "rows_affected": 1}
    if head == "SELECT":
        return {"columns": ["sql", "params"], "types": ["text", "text"], "values": [[sql, json.dumps(params)]]}
    return {}


class FakeStore:
    """The store process: applies the fake raft's log on demand and echoes queries."""

    def __init__(self, raft: FakeRaft) -> None:
        self.raft = raft
        self.delay = 0.0
        self.wait_error: Error | None = None
        self.lag_ms: int | None = 0
        """What the status reply says of how long the data has lagged (None: unknown)."""
        self.applied: int | None = None
        """What the status reply says is applied (None: the whole of the fake raft's log)."""

    def handle(self, msg: WireMessage) -> WireMessage | Delayed | None:
        reply = self._reply(msg)
        return Delayed(self.delay, reply) if self.delay else reply

    def _reply(self, msg: WireMessage) -> WireMessage:
        mid = getattr(msg, "id", 0)
        if isinstance(msg, WaitApplied):
            if self.wait_error is not None:
                return Error(id=mid, code=self.wait_error.code, message=self.wait_error.message)
            cmd = decode_command(self.raft.log[msg.index])
            statements = cmd.statements if isinstance(cmd, Command) else []  # bulk-load steps answer []
            return AppliedResult(id=mid, index=msg.index,
                                 result=[result_for(s.sql, _jsonable(s.params), msg.index) for s in statements])
        if isinstance(msg, Query):
            return QueryResult(id=mid, results=[result_for(s.sql, _jsonable(s.params), 0) for s in msg.statements],
                               applied=len(self.raft.log))
        if isinstance(msg, StatusRequest):
            applied = len(self.raft.log) if self.applied is None else self.applied
            return StoreStatus(id=mid, applied=applied, known_commit=len(self.raft.log),
                               lag_ms=self.lag_ms, db_path="", parked=0, disk_full="")
        return Error(id=mid, code=ErrorCode.BAD_REQUEST, message=f"fake store: {type(msg).__name__}")


def _jsonable(params: Any) -> Any:
    if isinstance(params, list):
        return [v.hex() if isinstance(v, bytes) else v for v in params]
    if isinstance(params, dict):
        return {k: v.hex() if isinstance(v, bytes) else v for k, v in params.items()}
    return params


def leader_endpoint(node_id: int = 2) -> Handler:
    """A fake leader's native api endpoint: echoes what it was asked in rqlite shapes."""
    def handle(msg: WireMessage) -> WireMessage:
        mid = getattr(msg, "id", 0)
        if isinstance(msg, ClientExecute):
            return ClientResults(id=mid, results=[{"last_insert_id": 99, "rows_affected": 1}], raft_index=42)
        if isinstance(msg, ClientQuery):
            return ClientResults(id=mid, results=[{"columns": ["level"], "types": ["text"],
                                                   "values": [[msg.level]]}])
        if isinstance(msg, StatusRequest):
            return StatusReply(id=mid, status={"node": {"id": str(node_id)}})
        return Error(id=mid, code=ErrorCode.BAD_REQUEST, message="?")
    return handle


@dataclass
class Cluster:
    """Addresses for a 3-node cluster of which node `me` runs a real ApiProcess."""

    root: Path
    http_ports: dict[int, int] = field(default_factory=dict)

    def peer(self, node_id: int) -> Peer:
        return Peer(id=node_id, raft=f"tcp://127.0.0.1:{7000 + node_id}",
                    http=f"127.0.0.1:{self.http_ports[node_id]}", api_zmq=f"ipc://{self.root}/api{node_id}.sock")

    def config(self, me: int, **api: int) -> NodeConfig:
        return NodeConfig(
            id=me, data_dir=self.root / f"n{me}", peers=tuple(self.peer(i) for i in (1, 2, 3)),
            raft_rpc=f"ipc://{self.root}/raft{me}.sock", raft_pub=f"ipc://{self.root}/pub{me}.sock",
            store_rpc=f"ipc://{self.root}/store{me}.sock", store_pub=f"ipc://{self.root}/spub{me}.sock",
            api=ApiSettings(**api),
        )


def make_cluster() -> Cluster:
    root = Path(tempfile.mkdtemp(prefix="zra", dir="/tmp"))
    return Cluster(root, {i: free_port() for i in (1, 2, 3)})


def remove_cluster(cluster: Cluster) -> None:
    shutil.rmtree(cluster.root, ignore_errors=True)


class ApiNode:
    """A real ApiProcess on an event loop in a background thread."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.process: ApiProcess | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "api process did not start"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.process = ApiProcess(self.config)
        try:
            await self.process.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            await self.process.close()
            return
        self._started.set()
        await self._stop.wait()
        await self.process.close()

    @property
    def port(self) -> int:
        assert self.process is not None
        return self.process.http_port

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (list, dict)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers or {},
                         encode_chunked="chunked" in (headers or {}).get("Transfer-Encoding", ""))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "api process did not stop"
