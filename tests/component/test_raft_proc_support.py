"""Helpers for the raft-process component tests: start raft-only nodes as subprocesses on
127.0.0.1 / ipc and talk to them. No tests here (imported by test_raft_proc.py and
test_transport.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from zraft.config import NodeConfig, Peer, RaftSettings, render
from zraft.transport import RpcClient, subscriber
from zraft.wire import decode
from zraft.wire.messages import (
    CommitNotice,
    EntriesReply,
    FetchEntries,
    RaftStatus,
    StatusRequest,
    WireMessage,
)

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `probe` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def make_configs(root: Path, count: int, tick_ms: int = 20, **raft: int) -> list[NodeConfig]:
    peers = tuple(Peer(id=i, raft=f"tcp://127.0.0.1:{free_port()}", http=f"127.0.0.1:{free_port()}",
                       api_zmq=f"tcp://127.0.0.1:{free_port()}") for i in range(1, count + 1))
    settings = RaftSettings(tick_ms=tick_ms, segment_bytes=1 << 20, **raft)
    configs = []
    for peer in peers:
        data = root / f"n{peer.id}"
        configs.append(NodeConfig(id=peer.id, data_dir=data, peers=peers,
                                  raft_rpc=f"ipc://{data}/raft.sock", raft_pub=f"ipc://{data}/raft-pub.sock",
                                  store_rpc=f"ipc://{data}/store.sock", store_pub=f"ipc://{data}/store-pub.sock",
                                  raft=settings))
    return configs


@dataclass
class Node:
    config: NodeConfig
    proc: subprocess.Popen[bytes] | None = None
    _rpc: RpcClient | None = field(default=None, repr=False)

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def log_path(self) -> Path:
        return self.config.data_dir / "raft.log"

    def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        toml = self.config.data_dir / "node.toml"
        toml.write_text(render(self.config))
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "zraft.procs.raft_proc", str(toml)],
                                         stdout=subprocess.DEVNULL, stderr=err)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, by PID."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.reset_rpc()

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.reset_rpc()
        return code

    def rpc(self) -> RpcClient:
        if self._rpc is None:
            self._rpc = RpcClient(self.config.raft_rpc)
        return self._rpc

    def reset_rpc(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None

    def call(self, msg: WireMessage, timeout: float = 2.0) -> WireMessage:
        return self.rpc().call(msg, timeout)

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        if not self.alive():
            return None
        try:
            reply = self.call(StatusRequest(0), timeout)
        except TimeoutError:
            return None
        assert isinstance(reply, RaftStatus), reply
        return asdict(reply)

    def fetch(self, start: int, max_bytes: int = 1 << 20) -> EntriesReply:
        reply = self.call(FetchEntries(0, start, max_bytes))
        assert isinstance(reply, EntriesReply), reply
        return reply

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    def __init__(self, root: Path, count: int, **raft: int) -> None:
        self.nodes = [Node(c) for c in make_configs(root, count, **raft)]

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def leader(self, timeout: float = 10.0, exclude: int = 0) -> Node:
        """The node that every live node agrees is the leader (of the highest term)."""
        def probe() -> Node | None:
            statuses = [s for s in (n.status(0.5) for n in self.nodes if n.alive()) if s]
            leaders = {s["node_id"] for s in statuses if s["role"] == "leader"}
            agreed = {s["leader"] for s in statuses}
            if len(leaders) == 1 and agreed == leaders and len(statuses) == sum(n.alive() for n in self.nodes):
                found = self.node(leaders.pop())
                return found if found.id != exclude else None
            return None
        return wait_for("a leader", probe, timeout)

    def logs(self) -> str:
        return "\n".join(f"--- node {n.id} ---\n{n.log_text()}" for n in self.nodes)


def recv_notice(sub: zmq.Socket[bytes], timeout: float) -> CommitNotice | None:
    if not sub.poll(int(timeout * 1000)):
        return None
    msg = decode(sub.recv_multipart())
    assert isinstance(msg, CommitNotice), msg
    return msg


def notice_subscriber(ctx: zmq.Context[zmq.Socket[bytes]], node: Node) -> zmq.Socket[bytes]:
    return subscriber(ctx, node.config.raft_pub)


def single_node(root: Path, **raft: int) -> Node:
    config = make_configs(root, 1, **raft)[0]
    return Node(replace(config))


@pytest.fixture(name="node")
def single_leader_node(tmp_path: Path) -> Iterator[Node]:
    """A one-node raft process that has elected itself; killed by PID afterwards."""
    n = single_node(tmp_path)
    n.start()
    try:
        wait_for("the single node to lead", lambda: (n.status() or {}).get("role") == "leader")
        yield n
    finally:
        n.kill()
