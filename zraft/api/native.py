"""The native ZeroMQ endpoint: ClientExecute, ClientQuery, ClientRemove, ClientTransfer and
StatusRequest on the node's api_zmq ROUTER, served by the same Service (and Membership) as
HTTP.

Used by followers forwarding to the leader (they set `options.forwarded`, so the request is
never forwarded again) and by native clients (zraft.client). The codec has validated every
statement by the time a request gets here; only rqlite's bounds on their number are checked.
Every failure is answered with a wire `Error` whose code is the zraft.api.errors code and
whose `leader` names the leader when known.
"""

from __future__ import annotations

import time
from dataclasses import replace

from zraft.api.errors import ApiError, BadRequest
from zraft.api.membership import Membership, request_for
from zraft.api.service import LEVELS, Request, Service
from zraft.api.statements import check_count
from zraft.wire.messages import (
    ClientExecute,
    ClientQuery,
    ClientRemove,
    ClientResults,
    ClientTransfer,
    Error,
    Ok,
    StatusReply,
    StatusRequest,
    WireMessage,
)


class NativeHandler:
    """Turns one native request into one reply; never raises for a request's failure."""

    def __init__(self, service: Service, membership: Membership) -> None:
        self.service = service
        self.membership = membership

    async def __call__(self, msg: WireMessage) -> WireMessage:
        request_id = getattr(msg, "id", 0)
        try:
            if isinstance(msg, StatusRequest):
                return StatusReply(id=request_id, status=await self.service.status_document())
            if isinstance(msg, ClientExecute | ClientQuery):
                with self.service.admit():
                    return await self._client_request(msg)
            if isinstance(msg, ClientRemove | ClientTransfer):
                with self.service.admit():
                    return await self._membership_request(msg)
            raise BadRequest(f"the api endpoint does not serve {type(msg).__name__}")
        except ApiError as exc:
            return Error(id=request_id, code=exc.code, message=exc.message, leader=exc.leader)

    async def _client_request(self, msg: ClientExecute | ClientQuery) -> WireMessage:
        check_count(msg.statements, self.service.config.api.max_statements)
        timeout_s = min(msg.timeout_ms, self.service.config.store.max_wait_ms) / 1000
        req = Request(statements=list(msg.statements), deadline=time.monotonic() + timeout_s,
                      options=msg.options)
        if isinstance(msg, ClientExecute):
            req.options = replace(msg.options, transaction=msg.transaction)
            outcome = await self.service.execute(req)
        else:
            req.level = "weak" if msg.level.lower() == "auto" else msg.level.lower()
            if req.level not in LEVELS:
                raise BadRequest(f"invalid level {msg.level!r}")
            outcome = await self.service.query(req)
        return ClientResults(id=msg.id, results=outcome.results, raft_index=outcome.raft_index)

    async def _membership_request(self, msg: ClientRemove | ClientTransfer) -> WireMessage:
        timeout_s = min(msg.timeout_ms, self.service.config.store.max_wait_ms) / 1000
        req = request_for(time.monotonic() + timeout_s, forwarded=msg.forwarded)
        if isinstance(msg, ClientRemove):
            await self.membership.remove(msg.node_id, req)
        else:
            await self.membership.transfer(msg.node_id, msg.wait, req)
        return Ok(id=msg.id)
