"""Cluster membership as the api serves it (issue 12): rqlite's /nodes, DELETE /remove and
POST /leader, for HTTP and the native endpoint alike.

- **/nodes tells the Raft configuration, not the static config**: the members are the
  voters (and with `nonvoters` the learners) of the configuration the raft process is using,
  `voter` says which they are, and each is probed in parallel for reachability. Addresses
  come from the node's configuration; a member with none configured is listed unreachable,
  saying so. When the raft process cannot be asked, the configured peers are listed as
  before.
- **A change goes to the leader**: a follower forwards it over the native endpoint (marked
  forwarded, so it hops once), or answers 301 with `redirect`. Like writes, it rides through
  an election: while no other node is known to lead, it asks again until its deadline.
- **remove** is answered once the change is committed and applied on the node that made it.
  Removing a node that is not a member changes nothing and succeeds, as in rqlite, so that a
  retried request is harmless. A change refused because an earlier one is not committed yet
  (BUSY) is asked again.
- **transfer** starts a leadership transfer (D§3.10) to the given voter, or to the most
  up-to-date one; with `wait` it is answered once another node leads, and fails with a
  timeout if none took over within the request's time.
- **An api that stops hands its node's leadership over first** (`hand_off_before_close`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from zraft.api.errors import ApiError, BadRequest, Busy, NotLeader, Timeout
from zraft.api.service import Request, Service
from zraft.wire.messages import ClientOptions, RaftStatus, RenderOptions

log = logging.getLogger(__name__)

WAIT_POLL_S = 0.05
"""How often a transfer with `wait` looks at who leads."""
STATUS_AT_CLOSE_S = 0.25


class MembershipRaft(Protocol):
    async def change_membership(self, op: str, node_id: int, timeout: float) -> tuple[int, int]: ...
    async def transfer(self, node_id: int, timeout: float) -> int: ...


class MembershipPeer(Protocol):
    async def remove(self, node_id: int, timeout: float) -> None: ...
    async def transfer(self, node_id: int, wait: bool, timeout: float) -> None: ...


class Membership:
    """The three operations; one instance per api process, beside its Service."""

    def __init__(self, service: Service, raft: MembershipRaft,
                 peer: Callable[[int], MembershipPeer | None]) -> None:
        self.service = service
        self._raft = raft
        self._peer = peer

    # == /nodes ================================================================================
    async def nodes(self, timeout: float, nonvoters: bool) -> list[dict[str, Any]]:
        """rqlite's node objects for the members of the Raft configuration."""
        service = self.service
        try:
            status = await service.raft_status(min(timeout, 2.0))
        except Exception:  # noqa: BLE001 - the raft process cannot be asked: the configured peers
            return await service.nodes(timeout)
        members = [(node, True) for node in status.voters]
        if nonvoters:
            members += [(node, False) for node in status.learners]
        probes = [self._describe(node, voter, status.leader, timeout) for node, voter in members]
        return list(await asyncio.gather(*probes))

    async def _describe(self, node_id: int, voter: bool, leader: int, timeout: float) -> dict[str, Any]:
        if self.service.config.peer(node_id) is None:
            return {"id": str(node_id), "voter": voter, "reachable": False, "leader": node_id == leader,
                    "error": "no address is configured for this node"}
        node = await self.service.probe(node_id, leader, timeout)
        node["voter"] = voter
        return node

    # == DELETE /remove ========================================================================
    async def remove(self, node_id: int, req: Request) -> None:
        async def here(status: RaftStatus) -> None:
            if node_id not in (*status.voters, *status.learners):
                return  # nothing to remove: as rqlite, a success
            index, term = await self._raft.change_membership("remove", node_id, req.remaining())
            await self.service.store.wait_applied(index, term, req.remaining(), RenderOptions())

        async def there(leader: int) -> None:
            peer = self._peer(leader)
            if peer is None:
                raise NotLeader("no address for the leader")
            await peer.remove(node_id, req.remaining())

        await self._at_leader(req, here, there)

    # == POST /leader ==========================================================================
    async def transfer(self, node_id: int, wait: bool, req: Request) -> None:
        async def here(status: RaftStatus) -> None:
            if node_id and node_id not in status.voters:
                raise BadRequest(f"node {node_id} is not a voter")
            target = await self._raft.transfer(node_id, req.remaining())
            if wait and target != self.service.node_id:
                await self._until_led_elsewhere(target, req)

        async def there(leader: int) -> None:
            peer = self._peer(leader)
            if peer is None:
                raise NotLeader("no address for the leader")
            await peer.transfer(node_id, wait, req.remaining())

        await self._at_leader(req, here, there)

    async def hand_off_before_close(self) -> None:
        """Before this api stops serving: if its node leads, hand leadership to the best voter
        and wait (at most two election timeouts, plus a heartbeat for the others to hear of
        it). Every follower forwards its writes to the leader's api, so a leader whose api is
        gone leaves the whole cluster unable to write; moved first, the writes go to the new
        leader while this api still answers what it had in flight."""
        raft = self.service.config.raft
        election_s = raft.election_ticks * raft.tick_ms / 1000
        req = request_for(time.monotonic() + 2 * election_s)
        try:  # a raft process that is stopping too answers nothing: do not wait long for it
            status = await self.service.raft_status(min(STATUS_AT_CLOSE_S, req.remaining()))
            if status.role != "leader" or len(status.voters) < 2:
                return
            target = await self._raft.transfer(0, req.remaining())
            await self._until_led_elsewhere(target, req)
            await asyncio.sleep(2 * raft.heartbeat_ticks * raft.tick_ms / 1000)
            log.info("stopping: leadership handed to node %d first", target)
        except ApiError as exc:
            log.warning("stopping without handing leadership over: %s", exc.message)

    async def _until_led_elsewhere(self, target: int, req: Request) -> None:
        while True:
            status: RaftStatus = await self.service.raft_status(req.remaining())
            if status.leader not in (0, self.service.node_id):
                return
            if req.remaining() <= WAIT_POLL_S:
                raise Timeout(f"node {target} did not take over leadership in time")
            await asyncio.sleep(WAIT_POLL_S)

    # == both ==================================================================================
    async def _at_leader(self, req: Request, here: Callable[[RaftStatus], Awaitable[None]],
                         there: Callable[[int], Awaitable[None]]) -> None:
        """Run `here` (given the raft status that shows this node leading) on the leader, or
        `there` from a follower; ride through elections and through an earlier change that
        is not committed yet."""
        service = self.service
        waiting = service.leader_wait(req)
        while True:
            try:
                status = await service.raft_status(req.remaining())
                if status.role == "leader":
                    await here(status)
                    return
                target = service.forward_target(status.leader, req)
                if target:
                    await there(target)
                    return
            except (NotLeader, Busy):
                if req.forwarded:
                    raise
            await waiting.pause()


def request_for(deadline: float, forwarded: bool = False, redirect: bool = False) -> Request:
    """A Request carrying only what a membership operation uses: its deadline (monotonic
    time) and flags."""
    return Request(statements=[], deadline=deadline, options=ClientOptions(forwarded=forwarded), redirect=redirect)
