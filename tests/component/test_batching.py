"""Per-loop-turn coalescing of Propose and WaitApplied: the api's AsyncRpcClient.call_batched
against a scripted ROUTER, and ProposeBatch against a real single-node raft process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq

from tests.component.test_raft_proc_support import Node, free_port, single_leader_node, wait_for  # noqa: F401 (fixture "node")
from zraft.api.errors import NotLeader, Timeout
from zraft.api.zmq_client import AsyncRpcClient, ZmqRaftClient, ZmqStoreClient
from zraft.wire import decode, encode
from zraft.wire.messages import (
    AppliedResult,
    AppliedResultBatch,
    EntriesReply,
    Error,
    FetchEntries,
    Propose,
    ProposeBatch,
    ProposedBatch,
    WaitApplied,
    WaitAppliedBatch,
    WireMessage,
)

pytestmark = pytest.mark.timeout(60)


class Router:
    """A ROUTER on the test's loop: records each request, answers via `respond`."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], respond) -> None:  # type: ignore[no-untyped-def]
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.address)
        self.respond = respond
        self.received: list[WireMessage] = []

    async def serve(self) -> None:
        while True:
            while self.sock.poll(0):
                identity, *frames = self.sock.recv_multipart()
                msg = decode(frames)
                assert isinstance(msg, WireMessage)
                self.received.append(msg)
                for reply in self.respond(msg):
                    self.sock.send_multipart([identity, *encode(reply)])
            await asyncio.sleep(0.002)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


async def _connected(client: AsyncRpcClient, router: Router, probe: WireMessage) -> None:
    for _ in range(200):  # IMMEDIATE=1: wait until the DEALER is connected
        try:
            await client.call(probe, 0.05)
            router.received.clear()
            return
        except Timeout:
            pass
    raise AssertionError("never connected")


def test_proposes_of_one_turn_travel_as_one_batch_with_per_request_outcomes(ctx) -> None:
    def respond(msg: WireMessage) -> list[WireMessage]:
        if isinstance(msg, ProposeBatch):
            rows: list[list[object]] = []
            for i, data in enumerate(msg.payloads):
                rows.append(["not_leader", "go elsewhere", 3] if data == b"refused" else [10 + i, 2])
            return [ProposedBatch(msg.id, rows)]
        if isinstance(msg, Propose):
            return [] if msg.data == b"silent" else [Error(msg.id, "not_leader", "no", leader=2)]
        return []

    async def scenario() -> None:
        router = Router(ctx, respond)
        server = asyncio.create_task(router.serve())
        client = AsyncRpcClient(ctx, router.address)
        raft = ZmqRaftClient(client)
        try:
            await _connected(client, router, Propose(0, b"probe"))
            outcomes = await asyncio.gather(raft.propose(b"a", 2), raft.propose(b"refused", 2),
                                            raft.propose(b"c", 2), return_exceptions=True)
            assert outcomes[0] == (10, 2) and outcomes[2] == (12, 2)
            assert isinstance(outcomes[1], NotLeader) and outcomes[1].leader == 3
            [batch] = router.received
            assert isinstance(batch, ProposeBatch) and batch.payloads == [b"a", b"refused", b"c"]

            router.received.clear()  # a lone request still goes as a plain Propose
            with pytest.raises(NotLeader) as info:
                await raft.propose(b"alone", 2)
            assert info.value.leader == 2
            assert [type(m) for m in router.received] == [Propose]

            with pytest.raises(Timeout):  # and times out on its own
                await raft.propose(b"silent", 0.1)
            assert not client._pending
        finally:
            client.close()
            server.cancel()
            router.sock.close(linger=0)

    asyncio.run(scenario())


def test_wait_applied_of_one_turn_travel_as_one_batch_answered_each(ctx) -> None:
    def respond(msg: WireMessage) -> list[WireMessage]:
        if isinstance(msg, WaitAppliedBatch):  # two answered together, the last on its own
            rows: list[list[object]] = []
            out: list[WireMessage] = []
            for request_id, index, term, _timeout_ms, options in msg.requests:
                if term == 1:
                    rows.append([request_id, "leadership_lost", "replaced", 0])
                elif index == 6:
                    out.append(AppliedResult(request_id, index, [{"index": index, **options}]))
                else:
                    rows.append([request_id, index, [{"index": index, **options}]])
            return [AppliedResultBatch(0, rows), *out]
        if isinstance(msg, WaitApplied):
            return [AppliedResult(msg.id, msg.index, [])]
        return []

    async def scenario() -> None:
        router = Router(ctx, respond)
        server = asyncio.create_task(router.serve())
        client = AsyncRpcClient(ctx, router.address)
        store = ZmqStoreClient(client)
        try:
            await _connected(client, router, WaitApplied(0, 1, 1))
            outcomes = await asyncio.gather(store.wait_applied(4, 2, 2, {"associative": True}),
                                            store.wait_applied(5, 1, 2, {}),
                                            store.wait_applied(6, 2, 2, {}), return_exceptions=True)
            assert outcomes[0] == [{"index": 4, "associative": True}]
            assert type(outcomes[1]).__name__ == "LeadershipLost"
            assert outcomes[2] == [{"index": 6}]
            [batch] = router.received
            assert isinstance(batch, WaitAppliedBatch) and [r[1] for r in batch.requests] == [4, 5, 6]
        finally:
            client.close()
            server.cancel()
            router.sock.close(linger=0)

    asyncio.run(scenario())



def test_raft_appends_a_propose_batch_in_order(node: Node) -> None:
    reply = node.call(ProposeBatch(9, [b"one", b"two", b"three"]))
    assert isinstance(reply, ProposedBatch)
    indexes = [row[0] for row in reply.results]
    assert indexes == list(range(indexes[0], indexes[0] + 3))
    assert all(len(row) == 2 and row[1] >= 1 for row in reply.results)
    entries = wait_for("the batch to commit",
                       lambda: len((r := node.fetch(indexes[0])).entries) >= 3 and r)
    assert isinstance(entries, EntriesReply)
    assert [e.data for e in entries.entries[:3]] == [b"one", b"two", b"three"]
    assert isinstance(node.call(FetchEntries(0, indexes[0])), EntriesReply)
