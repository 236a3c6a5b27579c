"""RpcClient: a small synchronous request/reply client for zraft's local RPC ROUTERs.

Lazy Pirate (zguide chapter 4, lpclient.py): every request carries a fresh `id`; a reply with
another id (a late answer to an abandoned request) is discarded; on a timeout the DEALER is
closed and recreated, so nothing stale can arrive afterwards, and RpcTimeout is raised. The
client never retries by itself: a Propose is not idempotent, so retrying is the caller's call.

One RpcClient belongs to one thread. `send`/`recv` allow pipelining several requests.
"""

from __future__ import annotations

import copy
import itertools
import time
from types import TracebackType

import zmq

from zraft.transport.sockets import rpc_dealer
from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import WireMessage


class RpcTimeout(TimeoutError):
    """No reply within the deadline; the connection was reset."""


class RpcClient:
    def __init__(self, address: str, context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.address = address
        self._ctx: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context.instance()
        self._ids = itertools.count(int(time.time_ns() % 1_000_000_000) * 1000 + 1)
        self._sock = rpc_dealer(self._ctx, address)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self.decode_errors = 0

    def call(self, msg: WireMessage, timeout_s: float) -> WireMessage:
        """Send `msg` (with a fresh id) and return its reply; RpcTimeout after `timeout_s`."""
        request_id = self.send(msg)
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.recv(deadline - time.monotonic())
            if reply is None:
                self.reset()
                raise RpcTimeout(f"no reply from {self.address} within {timeout_s} s")
            if getattr(reply, "id", None) == request_id:
                return reply

    def send(self, msg: WireMessage) -> int:
        """Send a copy of `msg` stamped with a fresh request id, which is returned."""
        request_id = next(self._ids)
        request = copy.copy(msg)
        setattr(request, "id", request_id)
        self._sock.send_multipart(encode(request))
        return request_id

    def recv(self, timeout_s: float) -> WireMessage | None:
        """The next well-formed reply, or None when `timeout_s` passes first."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._poller.poll(remaining_ms):
                return None
            try:
                reply = decode(self._sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                continue
            except RemoteProtocolError:
                self.decode_errors += 1
                continue
            if isinstance(reply, WireMessage):
                return reply
            self.decode_errors += 1

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The current DEALER, for callers that poll it beside other sockets; it changes
        after reset()."""
        return self._sock

    def reset(self) -> None:
        """Close and recreate the socket, abandoning every request in flight."""
        self._poller.unregister(self._sock)
        self._sock.close(linger=0)
        self._sock = rpc_dealer(self._ctx, self.address)
        self._poller.register(self._sock, zmq.POLLIN)

    def close(self) -> None:
        self._poller.unregister(self._sock)
        self._sock.close(linger=0)

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
