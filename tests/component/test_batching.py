"""Per-loop-turn coalescing of Propose and WaitApplied: the api's AsyncRpcClient.call_batched
against a scripted ROUTER, and ProposeBatch against a real single-node raft process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import asdict

import pytest
import zmq

from tests.component.test_raft_proc_support import Node, free_port, single_leader_node, wait_for  # noqa: F401 (fixture "node")
from zraft.api.errors import ApiError, NotLeader, Timeout
from zraft.api.zmq_client import AsyncRpcClient, ZmqRaftClient, ZmqStoreClient
from zraft.wire import decode, encode
from zraft.wire.messages import (
    Appended,
    AppliedResult,
    AppliedResultBatch,
    AppliedRow,
    EntriesReply,
    Error,
    ErrorCode,
    FailedRow,
    FetchEntries,
    Propose,
    ProposeBatch,
    ProposedBatch,
    Refused,
    RenderOptions,
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
            rows: list[Appended | Refused] = []
            for i, data in enumerate(msg.payloads):
                rows.append(Refused(ErrorCode.NOT_LEADER, "go elsewhere", 3) if data == b"refused"
                            else Appended(10 + i, 2))
            return [ProposedBatch(msg.id, rows)]
        if isinstance(msg, Propose):
            return [] if msg.data == b"silent" else [Error(msg.id, ErrorCode.NOT_LEADER, "no", leader=2)]
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


def echo(index: int, options: RenderOptions) -> list[object]:
    """A result that shows which options a wait carried (those not at their default)."""
    return [{"index": index, **{k: v for k, v in asdict(options).items() if v}}]


def test_wait_applied_of_one_turn_travel_as_one_batch_answered_each(ctx) -> None:
    def respond(msg: WireMessage) -> list[WireMessage]:
        if isinstance(msg, WaitAppliedBatch):  # two answered together, the last on its own
            rows: list[AppliedRow | FailedRow] = []
            out: list[WireMessage] = []
            for wait in msg.requests:
                if wait.term == 1:
                    rows.append(FailedRow(wait.id, ErrorCode.LEADERSHIP_LOST, "replaced", 0))
                elif wait.index == 6:
                    out.append(AppliedResult(wait.id, wait.index, echo(wait.index, wait.options)))
                else:
                    rows.append(AppliedRow(wait.id, wait.index, echo(wait.index, wait.options)))
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
            outcomes = await asyncio.gather(store.wait_applied(4, 2, 2, RenderOptions(associative=True)),
                                            store.wait_applied(5, 1, 2, RenderOptions()),
                                            store.wait_applied(6, 2, 2, RenderOptions()), return_exceptions=True)
            assert outcomes[0] == [{"index": 4, "associative": True}]
            assert type(outcomes[1]).__name__ == "LeadershipLost"
            assert outcomes[2] == [{"index": 6}]
            [batch] = router.received
            assert isinstance(batch, WaitAppliedBatch) and [r.index for r in batch.requests] == [4, 5, 6]
        finally:
            client.close()
            server.cancel()
            router.sock.close(linger=0)

    asyncio.run(scenario())


def test_a_batch_answer_with_the_wrong_number_of_rows_fails_each_request_at_once(ctx) -> None:
    def respond(msg: WireMessage) -> list[WireMessage]:
        if isinstance(msg, ProposeBatch):  # one row for a batch of two: which is which?
            return [ProposedBatch(msg.id, [Appended(10, 2)])]
        if isinstance(msg, Propose):
            return [Error(msg.id, ErrorCode.NOT_LEADER, "no", leader=2)]
        return []

    async def scenario() -> None:
        router = Router(ctx, respond)
        server = asyncio.create_task(router.serve())
        client = AsyncRpcClient(ctx, router.address)
        raft = ZmqRaftClient(client)
        try:
            await _connected(client, router, Propose(0, b"probe"))
            outcomes = await asyncio.gather(raft.propose(b"a", 5), raft.propose(b"b", 5), return_exceptions=True)
            for outcome in outcomes:
                assert type(outcome) is ApiError and "1 answers to a batch of 2" in outcome.message
            assert not client._pending and not client._batches
        finally:
            client.close()
            server.cancel()
            router.sock.close(linger=0)

    asyncio.run(asyncio.wait_for(scenario(), 3))  # at once: long before the requests' deadlines


def test_a_request_the_codec_cannot_encode_fails_at_once(ctx) -> None:
    """An index beyond 64 bits cannot be encoded: the requests of that turn fail with a clear
    error at once instead of never being sent and waiting out their deadlines."""
    async def scenario() -> None:
        router = Router(ctx, lambda msg: [Error(msg.id, ErrorCode.NOT_LEADER, "probe")])
        server = asyncio.create_task(router.serve())
        client = AsyncRpcClient(ctx, router.address)
        try:
            await _connected(client, router, Propose(0, b"probe"))
            replies = await asyncio.gather(
                client.call_batched(WaitApplied(0, 1 << 70, 1, 500, RenderOptions()), 5),
                client.call_batched(WaitApplied(0, 2, 1, 500, RenderOptions()), 5))
            for reply in replies:
                assert isinstance(reply, Error) and reply.code == ErrorCode.INTERNAL
                assert "cannot encode" in reply.message
            assert not client._pending
        finally:
            client.close()
            server.cancel()
            router.sock.close(linger=0)

    asyncio.run(asyncio.wait_for(scenario(), 3))


def test_raft_appends_a_propose_batch_in_order(node: Node) -> None:
    reply = node.call(ProposeBatch(9, [b"one", b"two", b"three"]))
    assert isinstance(reply, ProposedBatch)
    assert all(isinstance(row, Appended) and row.term >= 1 for row in reply.results)
    indexes = [row.index for row in reply.results if isinstance(row, Appended)]
    assert indexes == list(range(indexes[0], indexes[0] + 3))
    entries = wait_for("the batch to commit",
                       lambda: len((r := node.fetch(indexes[0])).entries) >= 3 and r)
    assert isinstance(entries, EntriesReply)
    assert [e.data for e in entries.entries[:3]] == [b"one", b"two", b"three"]
    assert isinstance(node.call(FetchEntries(0, indexes[0])), EntriesReply)
