"""The image puller's window (zraft.procs.snapshots.ImageTransfer, receiver side): several pulls
in flight, chunks handed to the store in order as they arrive, and recovery from a lost chunk,
a store that kept less than it was sent, and a sender that serves smaller chunks. An inproc
ROUTER stands in for the store; the peer link is a list."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import zmq

from zraft.procs.shell import Counters
from zraft.procs.snapshots import ImageTransfer
from zraft.raft import ConfState, Message, MsgType, SnapshotMeta
from zraft.wire.codec import decode, encode
from zraft.wire.messages import ImageWrite, ImageWritten, SnapshotChunk, SnapshotPull

CHUNK = 100
WINDOW = 4 * CHUNK
SIZE = 1000
LEADER = 2
IMAGE = bytes(range(256)) * 4  # SIZE bytes, each offset's byte differs from its neighbours'


class Harness:
    """An ImageTransfer on node 1 pulling from node 2, with a fake store and peer link."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> None:
        self.store = ctx.socket(zmq.ROUTER)
        self.store.bind(address)
        self.sent: list[SnapshotPull] = []
        self.stats = Counters(logging.getLogger("test"))
        self.transfer = ImageTransfer(ctx, 1, address, CHUNK, self._send, self.stats, window_bytes=WINDOW)
        self.now = 0.0
        self.kept = 0
        """What the fake store holds, in order."""

    def _send(self, msg: SnapshotPull | SnapshotChunk) -> bool:
        assert isinstance(msg, SnapshotPull)
        self.sent.append(msg)
        return True

    def close(self) -> None:
        self.transfer.close()
        self.store.close(linger=0)

    def start(self, index: int = 50) -> int:
        snap = Message(MsgType.SNAP, to=1, frm=LEADER, term=3, snapshot=SnapshotMeta(index, 3, ConfState((1, 2, 3))))
        assert self.transfer.hold(snap, self.now)
        return self.sent[-1].session

    def take_pulls(self) -> list[SnapshotPull]:
        pulls, self.sent = self.sent, []
        return pulls

    def answer(self, pull: SnapshotPull, size: int = SIZE, limit: int | None = None) -> None:
        """The leader's chunk for `pull` arrives (at most `limit` bytes)."""
        end = min(size, pull.offset + min(pull.max_bytes, limit or pull.max_bytes))
        self.transfer.on_chunk(SnapshotChunk(pull.id, LEADER, 1, pull.session, pull.offset, size, 60,
                                             IMAGE[pull.offset:end]), self.now)

    def store_writes(self, timeout_ms: int = 200) -> list[tuple[bytes, ImageWrite]]:
        out = []
        while self.store.poll(timeout_ms):
            ident, *frames = self.store.recv_multipart()
            msg = decode(frames)
            assert isinstance(msg, ImageWrite)
            out.append((ident, msg))
            timeout_ms = 20
        return out

    def store_acks(self, writes: list[tuple[bytes, ImageWrite]], installed: int = 0,
                   keep: bool = True) -> Message | None:
        """The fake store keeps writes that continue what it holds, and answers each."""
        for ident, w in writes:
            if keep and w.offset == self.kept:
                self.kept += len(w.data)
            done = installed if self.kept == w.size else 0
            self.store.send_multipart([ident, *encode(ImageWritten(w.id, w.session, self.kept, done))])
        released = None
        for _ in range(50):
            if self.transfer.sock.poll(20):
                released = self.transfer.on_store_replies(self.now) or released
            elif not self.transfer.sock.poll(0):
                break
        return released


@pytest.fixture
def harness() -> Iterator[Harness]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    h = Harness(ctx, f"inproc://store-{id(ctx)}")
    try:
        yield h
    finally:
        h.close()
        ctx.term()


def test_one_pull_until_the_size_is_known_then_a_window_of_them(harness: Harness) -> None:
    harness.start()
    first = harness.take_pulls()
    assert [(p.offset, p.max_bytes) for p in first] == [(0, CHUNK)]
    harness.answer(first[0])
    assert [p.offset for p in harness.take_pulls()] == [100, 200, 300]  # the window: 400 bytes unacked
    writes = harness.store_writes()
    assert [(w.offset, len(w.data)) for _, w in writes] == [(0, 100)]


def test_a_whole_transfer_installs_and_releases_the_snap(harness: Harness) -> None:
    harness.start(index=50)
    released = None
    rounds = 0
    while released is None and rounds < 50:
        rounds += 1
        for pull in harness.take_pulls():
            harness.answer(pull)
        released = harness.store_acks(harness.store_writes(), installed=60)
    assert released is not None and released.snapshot is not None and released.snapshot.index == 50
    assert harness.kept == SIZE and not harness.transfer.active
    assert harness.transfer.store_applied == 60
    assert rounds <= 5, rounds  # a window per round, not a chunk per round


def test_a_lost_chunk_is_pulled_again_once_and_later_chunks_are_not_doubled(harness: Harness) -> None:
    harness.start()
    harness.answer(harness.take_pulls()[0])
    window = harness.take_pulls()  # 100, 200, 300
    harness.answer(window[1])  # 100 is lost: 200 shows the gap
    harness.answer(window[2])  # from before the restart: no second restart
    again = harness.take_pulls()
    assert [p.offset for p in again] == [100, 200, 300, 400]  # a window from the first missing byte
    assert harness.stats["snapshot_chunk_gaps"] == 1
    for pull in again:
        harness.answer(pull)
    writes = harness.store_writes()
    assert [w.offset for _, w in writes] == [0, 100, 200, 300, 400]  # each byte handed over once


def test_a_chunk_of_an_earlier_pull_that_fits_is_used(harness: Harness) -> None:
    harness.start()
    harness.answer(harness.take_pulls()[0])
    window = harness.take_pulls()
    harness.answer(window[1])  # gap: pulls again from 100
    harness.answer(window[0])  # the "lost" chunk was only late: it fits, so it is used
    assert [w.offset for _, w in harness.store_writes()] == [0, 100]
    harness.take_pulls()
    harness.answer(SnapshotPull(window[0].id, 1, LEADER, window[0].session, 50, 100, CHUNK))  # a stale repeat
    assert harness.store_writes(timeout_ms=50) == []


def test_a_store_that_kept_less_makes_the_pull_go_on_from_what_it_has(harness: Harness) -> None:
    harness.start()
    harness.answer(harness.take_pulls()[0])
    for pull in harness.take_pulls():
        harness.answer(pull)
    writes = harness.store_writes()
    assert [w.offset for _, w in writes] == [0, 100, 200, 300]
    harness.store_acks(writes[:1])  # keeps [0, 100)
    harness.take_pulls()
    harness.store_acks(writes[1:], keep=False)  # says it holds 100 after the write ending at 200
    assert [p.offset for p in harness.take_pulls()][:1] == [100]


def test_a_sender_serving_smaller_chunks_sets_the_stride(harness: Harness) -> None:
    harness.start()
    harness.answer(harness.take_pulls()[0], limit=40)
    pulls = harness.take_pulls()
    assert [(p.offset, p.max_bytes) for p in pulls][:3] == [(40, 40), (80, 40), (120, 40)]
    for pull in pulls:
        harness.answer(pull, limit=40)
    assert [w.offset for _, w in harness.store_writes()] == [0, *(p.offset for p in pulls)]


def test_silence_pulls_again_from_the_first_missing_byte(harness: Harness) -> None:
    harness.start()
    harness.answer(harness.take_pulls()[0])
    harness.store_acks(harness.store_writes())
    harness.take_pulls()
    harness.now += 6.0
    harness.transfer.tick(harness.now)
    assert [p.offset for p in harness.take_pulls()][:1] == [100]
    assert harness.stats["snapshot_pull_retries"] == 1
