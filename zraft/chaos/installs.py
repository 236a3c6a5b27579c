"""Faults aimed at snapshot installs: a node is made to fall behind the leader's log start, so
that it must catch up through an image, and the fault strikes while that image is on its way.

- `install-kill`: kill -9 the node's store, its raft process, or all of its processes while
  the image is being received;
- `install-power-loss`: power loss on the node at that moment (every unsynced byte of its
  data folder dropped, every process killed);
- `install-bitflip`: one bit of the image flips in the staging file after it was written and
  before the image is installed. The store must refuse the image by its checksum (computed
  from the staging files, zraft/store/image.py) and pull it again.

How a node is made to fall behind: every process of a follower is stopped (SIGSTOP) until
the leader's log starts past the follower's last entry (the chaos clusters compact every 100
entries), then continued. The transfer is seen by its staging file, polled every few
milliseconds (the chaos database carries a ballast table, so an image takes many chunks).

Evidence: that a transfer was caught in flight, and what the node did about it (its
processes killed and run anew; for the bit flip, the store's log saying the checksum did not
match). A fault whose transfer was never caught did not fire, and says so.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Protocol

IMAGE_FILE = "snapshot-incoming/image.sqlite"
"""Where a store receives an image, under its data folder (zraft.procs.images, zraft.store.image)."""
BEHIND_TIMEOUT_S = 20.0
TRANSFER_TIMEOUT_S = 15.0
POLL_S = 0.002
MIN_CAUGHT_BYTES = 1 << 16
"""A staging file must hold this much before a fault strikes it: a transfer really under way."""


class InstallTarget(Protocol):
    def pids(self) -> dict[tuple[int, str], int]: ...

    def leader(self) -> int | None: ...

    def raft_state(self, node: int) -> dict[str, int]:
        """`node`'s /status store.raft section, its integers ({} when it does not answer)."""

    def next_index(self, leader: int, node: int) -> int:
        """The next entry `leader` will send `node` (0: unknown)."""

    def data_dir(self, node: int) -> Path: ...

    def cut_power(self, node: int) -> None: ...

    def process_log(self, node: int, kind: str) -> Path: ...


def signal_quietly(pid: int, signum: int) -> None:
    """Send `signum` to `pid`; a process that is already gone is not an error."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


class InstallFaults:
    """Puts one follower behind, waits for its image transfer, and strikes it."""

    def __init__(self, target: InstallTarget, rng: random.Random) -> None:
        self.target, self.rng = target, rng
        self.node = 0
        self.caught = 0
        """Bytes in the staging file when the fault struck (0: no transfer was caught)."""
        self._log_from = 0

    def strike(self, fault: str) -> tuple[str, dict[str, int]]:
        """Inject `fault`; (what was done, the PIDs it killed by name)."""
        self.node, self.caught = self._follower(), 0
        if not self.node:
            return "no follower to put behind", {}
        lag = self._fall_behind()
        image = self.target.data_dir(self.node) / IMAGE_FILE
        self._log_from = _size(self.target.process_log(self.node, "store"))
        deadline = time.monotonic() + TRANSFER_TIMEOUT_S
        while time.monotonic() < deadline:
            size = _size(image)
            if size >= MIN_CAUGHT_BYTES:
                if fault == "install-bitflip":
                    if self._flip(image, size):
                        self.caught = size
                        return f"node {self.node} ({lag}): one bit flipped in its incoming image at {size:,} bytes", {}
                else:
                    self.caught = size
                    return self._kill(fault, size, lag)
            time.sleep(POLL_S)
        return f"node {self.node} ({lag}): no image transfer seen within {TRANSFER_TIMEOUT_S:.0f} s", {}

    def evidence(self, fault: str) -> tuple[bool, str]:
        """For `install-bitflip` (the kills settle as kills do): did the store refuse the image?"""
        if not self.caught:
            return False, "no image transfer was caught in flight"
        lines = _lines_since(self.target.process_log(self.node, "store"), self._log_from)
        refused = [line for line in lines if "checksum does not match" in line]
        installed = [line for line in lines if "installed a snapshot image" in line]
        if fault != "install-bitflip":
            return True, f"{self.caught:,} bytes of the image were in when it struck; {len(installed)} install(s) since"
        if refused:
            return True, f"store refused the image: {refused[0][-160:]}; {len(installed)} install(s) since"
        return False, f"the store never reported the damaged image ({len(installed)} install(s) since)"

    def _follower(self) -> int:
        nodes = sorted({node for node, _ in self.target.pids()})
        leader = self.target.leader()
        followers = [n for n in nodes if n != leader]
        return self.rng.choice(followers) if followers else 0

    def _fall_behind(self) -> str:
        """Stop the follower until the leader's log starts past the next entry it would send
        it. (Past the follower's own last entry is not enough: what the leader sent before
        the stop waits in the socket's buffers and arrives on resume, contiguous.)"""
        pids = [pid for (node, _), pid in self.target.pids().items() if node == self.node]
        for pid in pids:
            signal_quietly(pid, signal.SIGSTOP)
        start, behind = time.monotonic(), False
        try:
            while time.monotonic() - start < BEHIND_TIMEOUT_S and not behind:
                time.sleep(0.1)
                leader = self.target.leader()
                if leader and leader != self.node:
                    following = self.target.next_index(leader, self.node)
                    behind = 0 < following <= self.target.raft_state(leader).get("last_snapshot_index", 0)
        finally:
            for pid in pids:
                signal_quietly(pid, signal.SIGCONT)
        held = time.monotonic() - start
        return f"stopped {held:.1f} s, " + ("behind the leader's log start" if behind else "not behind it")

    def _kill(self, fault: str, size: int, lag: str) -> tuple[str, dict[str, int]]:
        pids = {kind: pid for (node, kind), pid in self.target.pids().items() if node == self.node}
        if fault == "install-power-loss":
            victims = pids
            for pid in victims.values():
                signal_quietly(pid, signal.SIGSTOP)
            self.target.cut_power(self.node)
            what = "power loss"
        else:
            kinds = self.rng.choice((("store",), ("raft",), tuple(pids)))
            victims = {kind: pids[kind] for kind in kinds if kind in pids}
            what = "kill -9 " + ", ".join(victims)
        for pid in victims.values():
            signal_quietly(pid, signal.SIGKILL)
        return (f"node {self.node} ({lag}): {what} with {size:,} bytes of its incoming image in",
                {f"node{self.node}-{kind}": pid for kind, pid in victims.items()})

    def _flip(self, image: Path, size: int) -> bool:
        """Flip one bit well below what is being written now; False if the file is gone."""
        offset = self.rng.randrange(100, max(101, size // 2))
        try:
            with open(image, "r+b") as f:
                f.seek(offset)
                byte = f.read(1)
                if not byte:
                    return False
                f.seek(offset)
                f.write(bytes([byte[0] ^ (1 << self.rng.randrange(8))]))
        except OSError:
            return False
        return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _lines_since(path: Path, offset: int) -> list[str]:
    try:
        with open(path, errors="replace") as text:
            text.seek(offset)
            return [line.strip() for line in text]
    except OSError:
        return []
