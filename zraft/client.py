"""A small synchronous client for a node's native ZeroMQ endpoint (peer.api_zmq).

    with Client("tcp://127.0.0.1:4003") as client:
        client.execute(["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"])
        client.execute([["INSERT INTO t(name) VALUES(?)", "fiona"]], transaction=True)
        rows = client.query(["SELECT * FROM t"], level="linearizable").results

Statements take rqlite's forms: "sql", ["sql", p1, p2], ["sql", {"name": v}], or a
("sql", params) pair, with rqlite's value rules (bytes, a list of byte values or a string
x'0A1B' are BLOBs); they are checked before anything is sent. Any node accepts requests and
forwards them to the leader. Failures raise ClientError (with the wire error `code`, and
`leader` when known); no reply in time raises ClientTimeout, after which the connection is
reset (Lazy Pirate), so a late reply can never be mistaken for another request's. A Client
belongs to one thread.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any

import zmq

from zraft.api.errors import ApiError
from zraft.api.statements import normalize_client_statement
from zraft.transport.rpc import RpcClient, RpcTimeout
from zraft.wire.messages import (
    ClientExecute,
    ClientOptions,
    ClientQuery,
    ClientResults,
    Error,
    StatusReply,
    StatusRequest,
    WireMessage,
)
from zraft.wire.sql import Statement

_OPTION_NAMES = frozenset(f.name for f in fields(ClientOptions))
_IGNORED_OPTIONS = frozenset({"timings"})
"""Accepted for rqlite's sake and without effect: the native reply carries no timings."""


class ClientError(Exception):
    """The node answered with an error."""

    def __init__(self, code: str, message: str, leader: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.leader = leader


class ClientTimeout(ClientError):
    """No answer in time; whether a write was applied is unknown."""


@dataclass(frozen=True, slots=True)
class Results:
    results: list[Any]
    """rqlite's per-statement result objects."""
    raft_index: int = 0


class Client:
    def __init__(self, address: str, timeout: float = 10.0,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._rpc = RpcClient(address, context)

    def execute(self, statements: list[Any], transaction: bool = False,
                timeout: float | None = None) -> Results:
        """Run writes through the log (rqlite /db/execute)."""
        msg = ClientExecute(id=0, statements=_statements(statements), transaction=transaction,
                            timeout_ms=self._timeout_ms(timeout))
        return self._results(self._call(msg, timeout))

    def query(self, statements: list[Any], level: str = "weak", timeout: float | None = None,
              **options: bool) -> Results:
        """Reads at a consistency level: none, weak, linearizable or strong (rqlite /db/query).
        `options` are rqlite's flags: associative, blob_array, qualify_columns, transaction,
        norwrandom, norwtime, noparse (and db_timeout_ms, an integer); timings is accepted
        and has no effect here. Any other name is a TypeError."""
        msg = ClientQuery(id=0, statements=_statements(statements), level=level,
                          timeout_ms=self._timeout_ms(timeout), options=_options(options))
        return self._results(self._call(msg, timeout))

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        """The node's /status document."""
        reply = self._call(StatusRequest(id=0), timeout)
        if not isinstance(reply, StatusReply):
            raise ClientError("protocol", f"unexpected reply {type(reply).__name__}")
        return reply.status

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _timeout_ms(self, timeout: float | None) -> int:
        return max(1, int((timeout or self.timeout) * 1000))

    def _call(self, msg: WireMessage, timeout: float | None) -> WireMessage:
        wait = timeout or self.timeout
        try:
            reply = self._rpc.call(msg, wait + 0.5)  # the node answers its own timeout first
        except RpcTimeout as exc:
            raise ClientTimeout("timeout", str(exc)) from None
        if isinstance(reply, Error):
            raise ClientError(reply.code, reply.message, reply.leader)
        return reply

    @staticmethod
    def _results(reply: WireMessage) -> Results:
        if not isinstance(reply, ClientResults):
            raise ClientError("protocol", f"unexpected reply {type(reply).__name__}")
        return Results(reply.results, reply.raft_index)


def _statements(statements: list[Any]) -> list[Statement]:
    if isinstance(statements, str):
        statements = [statements]
    try:
        return [normalize_client_statement(s) for s in statements]
    except ApiError as exc:
        raise ClientError(exc.code, exc.message) from None


def _options(options: dict[str, bool]) -> ClientOptions:
    unknown = options.keys() - _OPTION_NAMES - _IGNORED_OPTIONS
    if unknown:
        raise TypeError(f"unknown query option(s): {', '.join(sorted(unknown))}")
    return ClientOptions(**{k: v for k, v in options.items() if k in _OPTION_NAMES})
