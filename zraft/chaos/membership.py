"""Leadership and membership faults (issue 12), the operator's moves under load:

- `transfer`: POST /leader through a random node, naming a random voter other than the
  leader; the leader hands over (D§3.10) while clients keep writing through every node.
- `restart`: a graceful restart of one node's three processes (SIGTERM, api first, as
  supervisord and systemd stop them; then started again). When the node leads, it hands
  leadership over before it stops.

Adding and removing nodes wait for joining (a new node cannot join yet): a removed node could
not come back, so the cluster would shrink run after run.

Evidence: for `transfer`, that the named node led right after the request was answered (it
may lose leadership again later under other faults); for `restart`, that every process of the
node ran anew under a new PID and the old ones are gone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Protocol

RESTART_TIMEOUT_S = 30.0
LEADER_WAIT_S = 10.0


class MembershipTarget(Protocol):
    def pids(self) -> dict[tuple[int, str], int]: ...

    def leader(self) -> int | None: ...

    @property
    def hosts(self) -> Sequence[str]: ...

    def transfer(self, via: int, to: int) -> str:
        """POST /leader?wait naming `to`, through node `via`; "" on success, else why not."""

    def restart_node(self, node: int) -> None:
        """Stop every process of `node` gracefully, then start them again."""


class MembershipFaults:
    """Strikes one membership fault at a time and keeps what its evidence needs."""

    def __init__(self, target: MembershipTarget, rng: random.Random) -> None:
        self._target = target
        self._rng = rng
        self._evidence = (False, "not struck")

    def strike(self, fault: str) -> tuple[str, dict[str, int]]:
        """Do `fault`; its description, and the PIDs it ends on purpose."""
        nodes = list(range(1, len(self._target.hosts) + 1))
        if fault == "transfer":
            leader = self._leader()
            others = [n for n in nodes if n != leader]
            to, via = self._rng.choice(others), self._rng.choice(nodes)
            problem = self._target.transfer(via, to)
            led = self._target.leader() == to
            self._evidence = (not problem and led, f"answered: {problem or 'ok'}; node {to} leads: {led}")
            return f"leadership to node {to} (was {leader}), asked through node {via}", {}
        node = self._rng.choice(nodes)
        before = {kind: pid for (n, kind), pid in self._target.pids().items() if n == node}
        started = time.monotonic()
        self._target.restart_node(node)
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while time.monotonic() < deadline:
            now = {kind: pid for (n, kind), pid in self._target.pids().items() if n == node}
            if now.keys() == before.keys() and all(now[k] != before[k] for k in now):
                break
            time.sleep(0.1)
        fresh = {kind: pid for (n, kind), pid in self._target.pids().items() if n == node}
        renewed = sorted(k for k in before if fresh.get(k) not in (None, before[k]))
        self._evidence = (bool(before) and renewed == sorted(before),
                          f"restarted in {time.monotonic() - started:.1f} s; new PIDs for {renewed}")
        return f"graceful restart of node {node}", {f"node{node}-{k}": pid for k, pid in before.items()}

    def evidence(self) -> tuple[bool, str]:
        return self._evidence

    def _leader(self) -> int | None:
        """The leader, waiting a little for one (the fault before may have just healed)."""
        deadline = time.monotonic() + LEADER_WAIT_S
        leader = self._target.leader()
        while leader is None and time.monotonic() < deadline:
            time.sleep(0.1)
            leader = self._target.leader()
        return leader
