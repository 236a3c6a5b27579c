"""A fake raft process for component tests: serves FetchEntries from a list and can publish
commit notices. Runs in a thread; binds only the ipc sockets named in the node config."""

from __future__ import annotations

import threading
import time

import zmq

from zraft.config import NodeConfig
from zraft.raft.types import Entry
from zraft.wire import decode, encode
from zraft.wire.messages import CommitNotice, EntriesReply, FetchEntries


class FakeRaft:
    def __init__(self, config: NodeConfig, publish: bool = True, sndhwm: int = 1000) -> None:
        self.config = config
        self.entries: list[Entry] = []
        self.commit = 0
        self.publish = publish
        self.sndhwm = sndhwm
        self.fetches = 0
        self.disk_full_reports: list[str] = []  # FetchEntries.disk_full of every fetch, in order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeRaft:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def commit_entries(self, entries: list[Entry]) -> None:
        with self._lock:
            self.entries.extend(entries)
            self.commit = self.entries[-1].index

    def announce_commit(self, commit: int) -> None:
        """Report `commit` in notices and fetch replies before its entries can be fetched, as
        a raft process would while the store cannot keep up: the store then lags."""
        with self._lock:
            self.commit = commit

    def _serve(self) -> None:
        ctx = zmq.Context.instance()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.config.raft_rpc)
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self.sndhwm)
        pub.bind(self.config.raft_pub)
        seq = 0
        try:
            while not self._stop.is_set():
                if router.poll(20):
                    identity, *frames = router.recv_multipart()
                    msg = decode(frames)
                    if isinstance(msg, FetchEntries):
                        self.fetches += 1
                        self.disk_full_reports.append(msg.disk_full)
                        with self._lock:
                            batch = [e for e in self.entries if e.index >= msg.start][:200]
                            commit = self.commit
                        router.send_multipart([identity, *encode(EntriesReply(id=msg.id, commit=commit,
                                                                              entries=batch))])
                if self.publish:
                    seq += 1
                    with self._lock:
                        commit = self.commit
                    try:
                        pub.send_multipart(encode(CommitNotice(epoch=1, seq=seq, commit=commit, term=1,
                                                               leader=1)), zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                    time.sleep(0.001)
        finally:
            router.close(0)
            pub.close(0)
