"""ZeroMQ plumbing for the asyncio API process, without zmq.asyncio.

Plain pyzmq sockets are driven by `loop.add_reader(socket FD)` (perf-baseline.md, key finding
3: zmq.asyncio is ~3x slower). Rules every socket here follows:
- the FD is edge-triggered: on a wake-up we drain with NOBLOCK until EAGAIN, and after every
  send we re-check `zmq.EVENTS`, because a send can consume the edge of a pending message;
- a drain handles at most BATCH messages, then yields to the loop and continues;
- every request has a deadline; a reply that arrives after it is dropped (counted); a request
  still queued locally when its deadline passes is never sent (no stale proposal goes out);
- DEALERs use IMMEDIATE=1, so nothing queues for a peer that is not connected and nothing stale
  is replayed when it comes back;
- sockets come from zraft.transport.sockets (api_dealer, api_server, api_subscriber), which
  says why each option is set; they close with LINGER=0. All objects belong to the event loop
  that made them;
- the codec validates every message it decodes, so replies and batch rows are used as they
  come; what does not decode is dropped and counted, and answered (a request) or failed at
  once (a reply) when its `id` could still be read.

Typed wrappers (ZmqRaftClient, ZmqStoreClient, ZmqPeerClient) turn replies into values and
wire `Error`s into zraft.api.errors exceptions; they satisfy the Protocols in service.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import zmq

from zraft.api.errors import ApiError, NotLeader, NotSent, Timeout, TooLarge, Unavailable, from_wire
from zraft.transport.sockets import NATIVE_MAX_FRAME, api_dealer, api_server, api_subscriber
from zraft.wire import RemoteProtocolError, WireMessage, decode, encode
from zraft.wire.messages import (
    Appended,
    AppliedResult,
    AppliedResultBatch,
    AppliedRow,
    BatchedWait,
    ClientExecute,
    ClientOptions,
    ClientQuery,
    ClientRemove,
    ClientResults,
    ClientTransfer,
    ConfChangeRequest,
    Error,
    ErrorCode,
    JsonObject,
    JsonValue,
    Ok,
    Propose,
    ProposeBatch,
    Proposed,
    ProposedBatch,
    Query,
    QueryOptions,
    QueryResult,
    RaftStatus,
    ReadIndex,
    ReadIndexReply,
    Compacted,
    CompactLog,
    Synced,
    SyncDatabase,
    RenderOptions,
    StatusReply,
    StatusRequest,
    TransferLeader,
    StoreStatus,
    WaitApplied,
    WaitAppliedBatch,
)
from zraft.wire.sql import Statement

log = logging.getLogger(__name__)

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]
Frames = list[bytes]
M = TypeVar("M", bound=WireMessage)

BATCH = 256
"""Messages handled per wake-up before yielding to the loop."""
RETRY_SEND_S = 0.02
FORWARD_SEND_TIMEOUT_S = 0.5
"""A forward that finds no connection to the leader's endpoint for this long gives up on that
node for now (zraft.api.service then asks again who leads)."""
"""How often a request queued behind a full or unconnected socket retries its send."""


class _Pump:
    """Common FD-reader scaffolding: one socket, one drain callback."""

    def __init__(self, sock: Socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._loop = loop
        self._fd = sock.fileno()
        self._scheduled = False
        self._closed = False
        self.dropped = 0
        loop.add_reader(self._fd, self._on_readable)
        self._schedule()  # something may be waiting already: the edge could be gone

    def _on_readable(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        try:
            self._drain()
        except zmq.ZMQError as exc:  # the socket is unusable; nothing sensible to retry
            log.error("zmq socket error: %s", exc)

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._on_readable)

    def _recheck(self) -> None:
        """After a send: an incoming message may be waiting whose edge we consumed."""
        if not self._closed and cast(int, self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._schedule()

    def _drain(self) -> None:
        for _ in range(BATCH):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)
        self._schedule()  # more may be waiting: let other callbacks run first

    def _handle(self, frames: Frames) -> None:
        raise NotImplementedError

    def _close_socket(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._sock.close(linger=0)


class AsyncRpcClient(_Pump):
    """A DEALER with many requests in flight; replies are matched by `id`."""

    def __init__(self, ctx: Context, address: str, loop: asyncio.AbstractEventLoop | None = None,
                 max_request_bytes: int | None = None) -> None:
        """`max_request_bytes`: the far end's frame cap (another node's native endpoint,
        sockets.native_max_frame_bytes); a request with a larger frame is refused here with
        TooLarge instead of costing the connection, and every request on it."""
        self.address = address
        self._max_request_bytes = max_request_bytes
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[WireMessage]] = {}
        self._outbox: deque[tuple[int, Frames]] = deque()
        self._retry: asyncio.TimerHandle | None = None
        # call_batched: requests of this loop iteration, sent together by _flush_queued.
        self._queued: list[tuple[int, Propose | WaitApplied, float]] = []
        self._flush_scheduled = False
        self._batches: dict[int, list[int]] = {}  # ProposeBatch id -> its requests' ids
        super().__init__(api_dealer(ctx, address), loop or asyncio.get_running_loop())

    async def call(self, msg: WireMessage, timeout: float, send_timeout: float | None = None) -> WireMessage:
        """Send `msg` stamped with a fresh id; its reply, or Timeout after `timeout` seconds.
        With `send_timeout`, a request that could not even be handed to a connection within
        that time (the far end is down or restarting) fails with NotSent instead: the far end
        never saw it, so the caller may safely send it elsewhere."""
        if self._closed:
            raise Unavailable(f"client for {self.address} is closed")
        if timeout <= 0:
            raise Timeout(f"deadline passed before asking {self.address}")
        request_id = next(self._ids)
        setattr(msg, "id", request_id)
        future: asyncio.Future[WireMessage] = self._loop.create_future()
        self._pending[request_id] = future
        timer = self._loop.call_later(timeout, self._expire, request_id, timeout)
        try:
            frames = encode(msg)
            if self._max_request_bytes is not None and max(map(len, frames)) > self._max_request_bytes:
                raise TooLarge(f"the request is {max(map(len, frames))} bytes encoded; {self.address} takes "
                               f"at most {self._max_request_bytes}")
            unsent = None
            if self._outbox or not self._send(frames):
                self._outbox.append((request_id, frames))
                self._arm_retry()
                if send_timeout is not None and send_timeout < timeout:
                    unsent = self._loop.call_later(send_timeout, self._expire_unsent, request_id)
            try:
                return await future
            finally:
                if unsent is not None:
                    unsent.cancel()
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)

    def _expire_unsent(self, request_id: int) -> None:
        """Give up on a request still waiting in the outbox: it never left this process."""
        for position, (queued_id, _) in enumerate(self._outbox):
            if queued_id == request_id:
                del self._outbox[position]
                future = self._pending.get(request_id)
                if future is not None and not future.done():
                    future.set_exception(NotSent(f"no connection to {self.address}: the request was not sent"))
                return

    async def call_batched(self, msg: Propose | WaitApplied, timeout: float) -> WireMessage:
        """As `call`, but requests made in the same event-loop iteration travel as one
        ProposeBatch / WaitAppliedBatch message (a lone request goes as itself). Each request
        keeps its own id, deadline and reply (Proposed / AppliedResult or Error)."""
        if self._closed:
            raise Unavailable(f"client for {self.address} is closed")
        if timeout <= 0:
            raise Timeout(f"deadline passed before asking {self.address}")
        request_id = next(self._ids)
        msg.id = request_id
        future: asyncio.Future[WireMessage] = self._loop.create_future()
        self._pending[request_id] = future
        timer = self._loop.call_later(timeout, self._expire, request_id, timeout)
        self._queued.append((request_id, msg, timeout))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_queued)
        try:
            return await future
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)

    def _flush_queued(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        if self._closed:
            return
        pending = self._pending
        proposes: list[tuple[int, Propose | WaitApplied, float]] = []
        waits: list[tuple[int, Propose | WaitApplied, float]] = []
        for item in queued:
            future = pending.get(item[0])
            if future is not None and not future.done():  # an expired request is never sent
                (proposes if isinstance(item[1], Propose) else waits).append(item)
        for group in (proposes, waits):
            if group:
                try:
                    self._flush_group(group, proposes)
                except (TypeError, ValueError) as exc:  # a message the codec cannot encode
                    self._fail([request_id for request_id, _, _ in group], f"cannot encode the request: {exc}")

    def _flush_group(self, group: list[tuple[int, Propose | WaitApplied, float]],
                     proposes: list[tuple[int, Propose | WaitApplied, float]]) -> None:
        """Send one kind of the turn's requests: alone, or as one batch message."""
        if len(group) == 1:
            request_id, msg, _ = group[0]
            self._send_or_queue(request_id, encode(msg))
            return
        batch_id = next(self._ids)
        batch: WireMessage
        if group is proposes:
            batch = ProposeBatch(id=batch_id, payloads=[cast(Propose, m).data for _, m, _ in group])
            self._batches[batch_id] = [request_id for request_id, _, _ in group]
            self._loop.call_later(max(t for _, _, t in group) + 1.0, self._batches.pop, batch_id, None)
        else:
            batch = WaitAppliedBatch(id=batch_id, requests=[
                BatchedWait(w.id, w.index, w.term, w.timeout_ms, w.options)
                for w in (cast(WaitApplied, m) for _, m, _ in group)])
        if self._outbox or not self._send(encode(batch)):
            # Slow path (peer not connected or full): queue them one by one, so that the
            # retry never sends a request whose deadline has passed.
            self._batches.pop(batch_id, None)
            for request_id, msg, _ in group:
                self._outbox.append((request_id, encode(msg)))
            self._arm_retry()

    def _send_or_queue(self, request_id: int, frames: Frames) -> None:
        if self._outbox or not self._send(frames):
            self._outbox.append((request_id, frames))
            self._arm_retry()

    def _resolve_batch(self, msg: ProposedBatch) -> None:
        """Each row answers the request at its position in the batch."""
        ids = self._batches.pop(msg.id, None)
        if ids is None:
            self.dropped += 1  # a late reply to an abandoned batch
            return
        if len(msg.results) != len(ids):
            self._fail(ids, f"{len(msg.results)} answers to a batch of {len(ids)} from {self.address}")
            return
        for request_id, row in zip(ids, msg.results):
            if isinstance(row, Appended):
                self._settle(request_id, Proposed(request_id, row.index, row.term))
            else:
                self._settle(request_id, Error(request_id, row.code, row.message, row.leader))

    def _resolve_applied(self, msg: AppliedResultBatch) -> None:
        """Each row names the request it answers (rows of one batch may come in several)."""
        for row in msg.rows:
            if isinstance(row, AppliedRow):
                self._settle(row.id, AppliedResult(row.id, row.index, row.result))
            else:
                self._settle(row.id, Error(row.id, row.code, row.message, row.leader))

    def _settle(self, request_id: int, reply: WireMessage) -> None:
        future = self._pending.get(request_id)
        if future is None or future.done():
            self.dropped += 1  # a late reply to an abandoned request
            return
        future.set_result(reply)

    def _fail(self, request_ids: list[int], message: str) -> None:
        for request_id in request_ids:
            self._settle(request_id, Error(request_id, ErrorCode.INTERNAL, message))

    def _send(self, frames: Frames) -> bool:
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._recheck()
        return True

    def _expire(self, request_id: int, timeout: float) -> None:
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_exception(Timeout(f"no reply from {self.address} within {timeout:.3f} s"))

    def _flush(self) -> None:
        while self._outbox:
            request_id, frames = self._outbox[0]
            if request_id in self._pending and not self._send(frames):
                self._arm_retry()
                return
            self._outbox.popleft()

    def _arm_retry(self) -> None:
        if self._retry is None and not self._closed:
            self._retry = self._loop.call_later(RETRY_SEND_S, self._on_retry)

    def _on_retry(self) -> None:
        self._retry = None
        if not self._closed:
            self._flush()

    def _drain(self) -> None:
        if self._outbox:
            self._flush()
        super()._drain()

    def _handle(self, frames: Frames) -> None:
        if frames and frames[0] == b"":
            frames = frames[1:]
        try:
            msg = decode(frames)
        except RemoteProtocolError as exc:
            log.warning("malformed reply from %s: %s", self.address, exc)
            self._malformed(exc)
            return
        if isinstance(msg, ProposedBatch):
            self._resolve_batch(msg)
        elif isinstance(msg, AppliedResultBatch):
            self._resolve_applied(msg)
        elif isinstance(msg, WireMessage):
            self._settle(getattr(msg, "id", -1), msg)
        else:
            self.dropped += 1  # a Raft message: not ours

    def _malformed(self, exc: RemoteProtocolError) -> None:
        """Fail at once what a malformed reply answered, when its id could be read (an
        AppliedResultBatch's rows name their requests, so those time out instead)."""
        message = f"malformed reply from {self.address}: {exc}"
        batch = self._batches.pop(exc.request_id, None) if exc.request_id is not None else None
        if batch is not None:
            self._fail(batch, message)
        elif exc.request_id is not None and exc.request_id in self._pending:
            self._fail([exc.request_id], message)
        else:
            self.dropped += 1

    def close(self) -> None:
        """Fail every request in flight with Unavailable and close the socket."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"connection to {self.address} closed"))
        self._outbox.clear()
        self._queued.clear()
        self._batches.clear()
        self._close_socket()


Handler = Callable[[WireMessage], Awaitable[WireMessage]]


class AsyncRpcServer(_Pump):
    """A ROUTER serving requests concurrently, one task each, replying to the sender."""

    def __init__(self, ctx: Context, address: str, handler: Handler,
                 loop: asyncio.AbstractEventLoop | None = None, max_frame_bytes: int = NATIVE_MAX_FRAME) -> None:
        sock = api_server(ctx, address, max_frame_bytes)
        self.address = address
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        super().__init__(sock, loop or asyncio.get_running_loop())

    def _handle(self, frames: Frames) -> None:
        cut = 2 if len(frames) > 2 and frames[1] == b"" else 1  # tolerate REQ-style delimiters
        envelope, body = frames[:cut], frames[cut:]
        try:
            msg = decode(body)
        except RemoteProtocolError as exc:
            self.dropped += 1
            log.warning("malformed request on %s: %s", self.address, exc)
            if exc.request_id is not None:  # the sender can be told instead of timing out
                self._reply(envelope, Error(id=exc.request_id, code=ErrorCode.BAD_REQUEST,
                                            message=f"malformed request: {exc}"))
            return
        if not isinstance(msg, WireMessage):
            self.dropped += 1
            return
        if not self._accepting:  # nothing was done: a forwarding node asks the next leader
            self._reply(envelope, Error(id=getattr(msg, "id", 0), code=ErrorCode.NOT_LEADER,
                                        message="the api process is shutting down"))
            return
        task = self._loop.create_task(self._serve(envelope, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, envelope: Frames, msg: WireMessage) -> None:
        try:
            reply = await self._handler(msg)
        except Exception as exc:  # a bug in a handler must not kill the endpoint
            log.exception("native request %s failed", type(msg).__name__)
            reply = Error(id=getattr(msg, "id", 0), code=ErrorCode.INTERNAL, message=str(exc))
        self._reply(envelope, reply)

    def _reply(self, envelope: Frames, reply: WireMessage) -> None:
        if self._closed:
            return
        try:
            self._sock.send_multipart([*envelope, *encode(reply)], zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.dropped += 1  # the client went away
        self._recheck()

    async def close(self, grace: float) -> None:
        """Refuse new requests, give the running ones `grace` seconds, close the socket."""
        self._accepting = False
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._close_socket()


class AsyncSubscriber(_Pump):
    """A SUB socket handing every decodable notice to `callback` (topic frame optional)."""

    def __init__(self, ctx: Context, address: str, callback: Callable[[WireMessage], None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        sock = api_subscriber(ctx, address)
        self.address = address
        self._callback = callback
        super().__init__(sock, loop or asyncio.get_running_loop())

    def _handle(self, frames: Frames) -> None:
        for start in (0, 1):  # with or without a topic frame before the header
            try:
                msg = decode(frames[start:])
            except RemoteProtocolError:
                continue
            if isinstance(msg, WireMessage):
                self._callback(msg)
            return
        self.dropped += 1

    def close(self) -> None:
        self._close_socket()


# == typed clients ============================================================================
def expect(reply: WireMessage, cls: type[M]) -> M:
    """`reply` as `cls`, or the exception an `Error` reply stands for."""
    if isinstance(reply, cls):
        return reply
    if isinstance(reply, Error):
        raise from_wire(reply.code, reply.message, reply.leader)
    raise ApiError(f"unexpected reply {type(reply).__name__}, wanted {cls.__name__}")


def _ms(timeout: float) -> int:
    return max(1, int(timeout * 1000))


class ZmqRaftClient:
    """The local raft process (config.raft_rpc)."""

    def __init__(self, rpc: AsyncRpcClient) -> None:
        self.rpc = rpc

    async def propose(self, data: bytes, timeout: float) -> tuple[int, int]:
        reply = expect(await self.rpc.call_batched(Propose(id=0, data=data), timeout), Proposed)
        return reply.index, reply.term

    async def read_index(self, timeout: float) -> int:
        return expect(await self.rpc.call(ReadIndex(id=0), timeout), ReadIndexReply).index

    async def status(self, timeout: float) -> RaftStatus:
        return expect(await self.rpc.call(StatusRequest(id=0), timeout), RaftStatus)

    async def compact(self, durable: int, trailing: int, timeout: float) -> Compacted:
        return expect(await self.rpc.call(CompactLog(id=0, durable=durable, trailing=trailing), timeout), Compacted)

    async def change_membership(self, op: str, node_id: int, timeout: float) -> tuple[int, int]:
        """Propose a membership change ("remove", "add_learner", "add_voter"); its entry's
        (index, term)."""
        reply = expect(await self.rpc.call(ConfChangeRequest(0, op, node_id), timeout), Proposed)
        return reply.index, reply.term

    async def transfer(self, node_id: int, timeout: float) -> int:
        """Start a leadership transfer to `node_id` (0: the best voter); the target's id."""
        reply = expect(await self.rpc.call(TransferLeader(0, node_id), timeout), Ok)
        return int(reply.result or 0)


class ZmqStoreClient:
    """The local store process (config.store_rpc)."""

    def __init__(self, rpc: AsyncRpcClient) -> None:
        self.rpc = rpc

    async def wait_applied(self, index: int, term: int, timeout: float, options: RenderOptions) -> JsonValue:
        msg = WaitApplied(id=0, index=index, term=term, timeout_ms=_ms(timeout), options=options)
        return expect(await self.rpc.call_batched(msg, timeout), AppliedResult).result

    async def query(self, statements: list[Statement], min_applied: int, timeout: float,
                    options: QueryOptions) -> list[JsonValue]:
        msg = Query(id=0, statements=statements, min_applied=min_applied, timeout_ms=_ms(timeout),
                    options=options)
        return expect(await self.rpc.call(msg, timeout), QueryResult).results

    async def status(self, timeout: float) -> StoreStatus:
        return expect(await self.rpc.call(StatusRequest(id=0), timeout), StoreStatus)

    async def sync(self, timeout: float) -> int:
        """fsync what the store has applied; the applied index now durable."""
        return expect(await self.rpc.call(SyncDatabase(id=0), timeout), Synced).durable


def _hop_budget(timeout: float) -> float:
    """What a forwarded request may spend remotely, leaving time for its reply to travel."""
    return timeout - min(0.05, timeout * 0.1)


class ZmqPeerClient:
    """Another node's native API endpoint (peer.api_zmq), used to forward to the leader."""

    def __init__(self, rpc: AsyncRpcClient) -> None:
        self.rpc = rpc

    async def execute(self, statements: list[Statement], timeout: float,
                      options: ClientOptions) -> tuple[list[JsonValue], int]:
        """rqlite's /db/execute on that node; `options.transaction` is the request's flag."""
        msg = ClientExecute(id=0, statements=statements, transaction=options.transaction,
                            timeout_ms=_ms(_hop_budget(timeout)), options=options)
        return await self._forward(msg, timeout)

    async def query(self, statements: list[Statement], level: str, timeout: float,
                    options: ClientOptions) -> tuple[list[JsonValue], int]:
        msg = ClientQuery(id=0, statements=statements, level=level,
                          timeout_ms=_ms(_hop_budget(timeout)), options=options)
        return await self._forward(msg, timeout)

    async def remove(self, node_id: int, timeout: float) -> None:
        """rqlite's DELETE /remove on that node (the leader), marked as forwarded."""
        msg = ClientRemove(0, node_id, _ms(_hop_budget(timeout)), forwarded=True)
        await self._call_forward(msg, timeout, Ok)

    async def transfer(self, node_id: int, wait: bool, timeout: float) -> None:
        """rqlite's POST /leader on that node (the leader), marked as forwarded."""
        msg = ClientTransfer(0, node_id, wait, _ms(_hop_budget(timeout)), forwarded=True)
        await self._call_forward(msg, timeout, Ok)

    async def _call_forward(self, msg: WireMessage, timeout: float, cls: type[M]) -> M:
        try:
            return expect(await self.rpc.call(msg, timeout, send_timeout=FORWARD_SEND_TIMEOUT_S), cls)
        except NotSent as exc:
            raise NotLeader(exc.message) from None

    async def _forward(self, msg: ClientExecute | ClientQuery, timeout: float) -> tuple[list[JsonValue], int]:
        """A request that could not reach that node at all is a NotLeader: the caller asks
        again who leads (that node may be restarting) instead of waiting out the deadline."""
        reply = await self._call_forward(msg, timeout, ClientResults)
        return reply.results, reply.raft_index

    async def status(self, timeout: float) -> JsonObject:
        return expect(await self.rpc.call(StatusRequest(id=0), timeout), StatusReply).status


class PeerClients:
    """One lazily made ZmqPeerClient per peer node id, from the configured peers."""

    def __init__(self, ctx: Context, addresses: dict[int, str], max_request_bytes: int | None = None) -> None:
        self._ctx = ctx
        self._addresses = addresses
        self._max_request_bytes = max_request_bytes
        self._clients: dict[int, ZmqPeerClient] = {}

    def get(self, node_id: int) -> ZmqPeerClient | None:
        client = self._clients.get(node_id)
        if client is None:
            address = self._addresses.get(node_id)
            if address is None:
                return None
            client = self._clients[node_id] = ZmqPeerClient(
                AsyncRpcClient(self._ctx, address, max_request_bytes=self._max_request_bytes))
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.rpc.close()
        self._clients.clear()
