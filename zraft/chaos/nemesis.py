"""Faults the chaos suite injects into a running local cluster, each with its own proof.

A fault that silently does nothing would turn a chaos run into a false pass, so every
fault records evidence that it took effect, and the runner counts a run as valid only if
every fault it injected can show it:
- network faults (partitions, packet loss) are iptables DROP rules on the loopback
  interface between node addresses, in a chain of their own; the rules' packet counters
  prove that traffic between nodes was actually dropped;
- kill -9: the process is gone, and supervisord later runs it again under a new PID;
- pause: the process is seen in state T (stopped) before it is continued;
- clock: the node's API reports (in /status) a wall clock off by the injected offset, or
  running at the injected rate, measured against ours;
- power loss: every process of the node(s) was stopped, the data folder's unsynced bytes
  dropped (zraft.chaos.disks), and supervisord ran every process anew under a new PID;
- slow disk: fsyncs on the node's data folder were actually stalled (lazyfs counts them);
- bit flip: the node's raft process, restarted on a log with one flipped bit in synced
  data, said so in its log (checksums caught it) and salvaged it (or refused to start);
- disk full: the node's disk had no free space left while the fault lasted (whether the
  node noticed depends on whether it needed new space: the log segment is preallocated and
  SQLite reuses its WAL; the evidence says whether it did).

Network faults rely on each node sending from its own 127.0.0.x address (see
zraft.transport.sockets.from_own_address); the runner checks that with `ss` before
trusting a partition.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from zraft.chaos.disks import BitFlip, flip_synced_entry_bit, undo_flip
from zraft.chaos.installs import InstallFaults, signal_quietly
from zraft.chaos.membership import MembershipFaults
from zraft.cluster import process_state

NETWORK_FAULTS = ("partition-halves", "partition-leader", "partition-bridge", "partition-asym", "loss")
PROCESS_FAULTS = ("kill", "kill-node", "pause")
CLOCK_FAULTS = ("clock",)
DISK_FAULTS = ("power-loss", "disk-full", "slow-disk", "bitflip")
SNAPSHOT_FAULTS = ("install-kill", "install-power-loss", "install-bitflip")
MEMBERSHIP_FAULTS = ("transfer", "restart")
ALL_FAULTS = NETWORK_FAULTS + PROCESS_FAULTS + CLOCK_FAULTS + DISK_FAULTS + SNAPSHOT_FAULTS + MEMBERSHIP_FAULTS
GROUPS: dict[str, tuple[str, ...]] = {
    "partition": ("partition-halves", "partition-leader", "partition-bridge", "partition-asym"),
    "snapshot": SNAPSHOT_FAULTS,
    "membership": MEMBERSHIP_FAULTS,
    "all": ALL_FAULTS,
}
LOSS_PROBABILITY = 0.2
FULL_DISK_SLACK = 64 << 10
"""A disk with at most this much free space left counts as full (tmpfs keeps a few pages)."""
PROCESS_TYPES = ("raft", "store", "api")
KILLING_FAULTS = frozenset({"kill", "kill-node", "power-loss", "bitflip", "install-kill", "install-power-loss",
                            "restart"})
"""Faults that end processes on purpose; under every other fault a restart is a crash."""


def expand(names: Sequence[str]) -> tuple[str, ...]:
    """Turn `--nemesis` names (faults or groups like `partition`, `all`) into fault names."""
    out: list[str] = []
    for name in names:
        for fault in GROUPS.get(name, (name,)):
            if fault not in ALL_FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(ALL_FAULTS + tuple(GROUPS))}")
            if fault not in out:
                out.append(fault)
    return tuple(out)


class Target(Protocol):
    """What a fault needs to know about the cluster it breaks."""

    @property
    def hosts(self) -> Sequence[str]:
        """Each node's address, node 1 first."""

    def pids(self) -> dict[tuple[int, str], int]:
        """(node id, process type) -> PID of every running program."""

    def leader(self) -> int | None:
        """The current leader's node id, if one is known."""

    def set_clock(self, node: int, spec: str) -> None:
        """Give every process of `node` the libfaketime spec `spec` ("+0" is the true time)."""

    def node_time(self, node: int) -> float | None:
        """The wall clock of `node`'s processes (as its API reports it), or None."""

    def cut_power(self, node: int) -> None:
        """Drop every unsynced byte of `node`'s data folder."""

    def fill_disk(self, node: int) -> int:
        """Fill `node`'s data disk; the bytes it took."""

    def drain_disk(self, node: int) -> None:
        """Give `node`'s data disk its space back."""

    def disk_report(self, node: int) -> str:
        """What `node` says about its disk ("" while it can write)."""

    def disk_free(self, node: int) -> int:
        """Free bytes left on `node`'s data disk."""

    def log_dir(self, node: int) -> Path:
        """`node`'s Raft log folder."""

    def slow_disk(self, node: int, delay_ms: int) -> None:
        """Make every fsync of `node` stall `delay_ms` (0: normal again)."""

    def slowed_syncs(self, node: int) -> int:
        """How many of `node`'s fsyncs have been stalled so far."""

    def process_log(self, node: int, kind: str) -> Path:
        """The file a process of `node` writes its log lines to."""

    def raft_state(self, node: int) -> dict[str, int]:
        """`node`'s /status store.raft section ({} when it does not answer)."""

    def data_dir(self, node: int) -> Path:
        """`node`'s data folder."""

    def next_index(self, leader: int, node: int) -> int:
        """The next entry `leader` will send `node` (0: unknown)."""

    def transfer(self, via: int, to: int) -> str:
        """POST /leader?wait naming `to`, through node `via`; "" on success, else why not."""

    def restart_node(self, node: int) -> None:
        """Stop every process of `node` gracefully, then start them again."""


@dataclass
class Injection:
    """One fault as injected: what, where, when, and the proof that it bit."""

    fault: str
    detail: str
    started: float
    ended: float = 0.0
    fired: bool = False
    evidence: str = "no evidence collected"
    pids: dict[str, int] = field(default_factory=dict)
    problem: str = ""
    """Set when the system misbehaved under this fault (a process crashed that should not)."""

    def to_json(self) -> dict[str, object]:
        return {"fault": self.fault, "detail": self.detail, "started": round(self.started, 3),
                "ended": round(self.ended, 3), "fired": self.fired, "evidence": self.evidence,
                "problem": self.problem}


class Firewall:
    """iptables rules in one chain of our own, hooked into INPUT, removed on close."""

    PREFIX = "ZRAFT-"

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.sweep_orphans()
        self._run("-N", chain)
        self._run("-I", "INPUT", "-j", chain)

    @staticmethod
    def _run(*args: str, check: bool = True) -> str:
        done = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    @classmethod
    def for_run(cls, index: int) -> "Firewall":
        """A chain named after this process, so that a later run can tell whether its owner lives."""
        return cls(f"{cls.PREFIX}{os.getpid()}-{index}")

    @classmethod
    def sweep_orphans(cls) -> None:
        """Remove chains left by a campaign that was killed before it could close them: their
        rules would silently partition the next run's nodes."""
        for line in cls._run("-S").splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[0] != "-N" or not parts[1].startswith(cls.PREFIX):
                continue
            owner = parts[1][len(cls.PREFIX):].split("-")[0]
            if owner.isdigit() and not _process_alive(int(owner)):
                orphan = cls.__new__(cls)
                orphan.chain = parts[1]
                orphan.close()

    def drop(self, source: str, destination: str, probability: float = 1.0) -> None:
        rule = ["-A", self.chain, "-s", source, "-d", destination]
        if probability < 1.0:
            rule += ["-m", "statistic", "--mode", "random", "--probability", f"{probability:g}"]
        self._run(*rule, "-j", "DROP")

    def dropped_packets(self) -> int:
        out = self._run("-L", self.chain, "-v", "-x", "-n")
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.split())

    def heal(self) -> None:
        self._run("-F", self.chain)

    def close(self) -> None:
        self._run("-D", "INPUT", "-j", self.chain, check=False)
        self._run("-F", self.chain, check=False)
        self._run("-X", self.chain, check=False)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Nemesis:
    """Injects one fault at a time into `target`, seeded, and heals it."""

    def __init__(self, target: Target, firewall: Firewall, rng: random.Random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target, self.firewall, self.rng, self.clock = target, firewall, rng, clock
        self.current: Injection | None = None
        self._stopped: list[int] = []
        self._clock_node = 0
        self._clock_sample: tuple[float, float] | None = None
        self._clock_change: tuple[str, float] = ("", 0.0)
        self._clock_samples: list[tuple[float, float]] = []
        self._disk_node = 0
        self._disk_seen = ""
        self._disk_free = -1
        self._flip: BitFlip | None = None
        self._flip_node = 0
        self._flip_log_from = 0
        self._slow_node = 0
        self._slowed_before = 0
        self._pids_before: dict[tuple[int, str], int] = {}
        self._installs = InstallFaults(target, rng)
        self._members = MembershipFaults(target, rng)

    # -- network -------------------------------------------------------------------------
    def _cut(self, groups: Sequence[Sequence[str]]) -> None:
        for group in groups:
            for other in groups:
                if other is group:
                    continue
                for source in group:
                    for destination in other:
                        self.firewall.drop(source, destination)

    def _partition(self, mode: str) -> str:
        hosts = list(self.target.hosts)
        if mode == "partition-leader":
            leader = self.target.leader()
            alone = hosts[leader - 1] if leader else self.rng.choice(hosts)
            self._cut([[alone], [h for h in hosts if h != alone]])
            return f"leader {alone} isolated" if leader else f"{alone} isolated (no leader known)"
        if mode == "partition-halves":
            self.rng.shuffle(hosts)
            half = len(hosts) // 2 if self.rng.random() < 0.5 else (len(hosts) + 1) // 2
            self._cut([hosts[:half], hosts[half:]])
            return f"{hosts[:half]} | {hosts[half:]}"
        if mode == "partition-bridge":
            self.rng.shuffle(hosts)
            bridge, left, right = hosts[0], hosts[1::2], hosts[2::2]
            self._cut([left, right])
            return f"{left} | {right}, bridged by {bridge}"
        # partition-asym: one node's packets to the others are dropped; theirs still arrive
        mute = self.rng.choice(hosts)
        for other in hosts:
            if other != mute:
                self.firewall.drop(mute, other)
        return f"{mute} -> others dropped (one way)"

    def _loss(self) -> str:
        for source in self.target.hosts:
            for destination in self.target.hosts:
                if source != destination:
                    self.firewall.drop(source, destination, LOSS_PROBABILITY)
        return f"{LOSS_PROBABILITY:.0%} random loss between all nodes"

    # -- processes -----------------------------------------------------------------------
    def _victims(self, fault: str) -> dict[str, int]:
        pids = self.target.pids()
        nodes = sorted({node for node, _ in pids})
        if not nodes:
            return {}
        node = self.rng.choice(nodes)
        if fault == "kill-node" or (fault == "pause" and self.rng.random() < 0.3):
            kinds: Sequence[str] = PROCESS_TYPES
        else:
            kinds = [self.rng.choice(PROCESS_TYPES)]
        return {f"node{node}-{kind}": pids[(node, kind)] for kind in kinds if (node, kind) in pids}

    def _kill(self, fault: str, injection: Injection) -> str:
        victims = self._victims(fault)
        for pid in victims.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        injection.pids = victims
        return f"kill -9 {', '.join(f'{name} ({pid})' for name, pid in victims.items())}" if victims \
            else "no running process to kill"

    def _pause(self, injection: Injection) -> str:
        victims = self._victims("pause")
        for pid in victims.values():
            try:
                os.kill(pid, signal.SIGSTOP)
                self._stopped.append(pid)
            except ProcessLookupError:
                pass
        injection.pids = victims
        deadline = time.monotonic() + 2.0  # the signal is delivered asynchronously
        while time.monotonic() < deadline and any(process_state(p) not in ("T", "gone") for p in victims.values()):
            time.sleep(0.01)
        stopped = [name for name, pid in victims.items() if process_state(pid) == "T"]
        injection.fired = bool(victims) and len(stopped) == len(victims)
        injection.evidence = f"state T seen for {stopped}" if stopped else "no process seen stopped"
        return f"SIGSTOP {', '.join(f'{name} ({pid})' for name, pid in victims.items())}"

    # -- clocks --------------------------------------------------------------------------
    def _skew(self) -> str:
        """Bump one node's wall clock by up to 5 minutes either way, or make it run at half
        or double speed."""
        self._clock_node = self.rng.randrange(1, len(self.target.hosts) + 1)
        if self.rng.random() < 0.5:
            offset = self.rng.choice((-1, 1)) * self.rng.randint(10, 300)
            self._clock_change = ("offset", float(offset))
            spec = f"{offset:+d}"
        else:
            rate = self.rng.choice((0.5, 2.0))
            self._clock_change = ("rate", rate)
            spec = f"+0 x{rate:g}"
        self.target.set_clock(self._clock_node, spec)
        self._clock_samples = []
        self._clock_sample = self._await_clock()
        return f"node {self._clock_node} clock {spec}"

    def _await_clock(self) -> tuple[float, float] | None:
        """The first (real, node) clock sample taken once the node runs on the new spec.

        Processes re-read the spec at most once a second, so a couple of seconds would do,
        but a node busy recovering from an earlier fault can answer /status slowly: poll for
        up to 10 s. A new rate shows as a jump (libfaketime applies it from the process's
        start)."""
        kind, amount = self._clock_change
        deadline = time.monotonic() + 10.0
        while True:
            sample = self._sample_clock()
            if sample is not None:
                skew = sample[1] - sample[0]
                if (abs(skew - amount) < 3.0) if kind == "offset" else abs(skew) > 0.5:
                    return sample
            if time.monotonic() > deadline:
                return None
            time.sleep(0.25)

    def _sample_clock(self) -> tuple[float, float] | None:
        real = time.time()
        fake = self.target.node_time(self._clock_node)
        return None if fake is None else (real, fake)

    def _settle_clock(self, injection: Injection) -> None:
        end = self._sample_clock()
        self.target.set_clock(self._clock_node, "+0")
        start, (kind, amount) = self._clock_sample, self._clock_change
        if start is None or end is None:
            injection.evidence = "the node's clock was not seen on the new spec"
            return
        if kind == "offset":
            seen = end[1] - end[0]
            injection.fired = abs(seen - amount) < 3.0
            injection.evidence = f"node clock off by {seen:+.1f} s (injected {amount:+.0f} s)"
            return
        # A rate shows between any two samples at least 2 s apart with no jump between
        # them; a process restarted meanwhile (libfaketime counts the rate from process
        # start) makes a jump, so look for one clean window rather than trusting the ends.
        samples = [start, *self._clock_samples, end]
        for i, first in enumerate(samples):
            later = next((s for s in samples[i + 1:] if s[0] - first[0] >= 2.0), None)
            if later is None:
                break
            seen = (later[1] - first[1]) / (later[0] - first[0])
            if abs(seen - amount) < 0.25 * amount:
                injection.fired = True
                injection.evidence = (f"node clock ran x{seen:.2f} over {later[0] - first[0]:.1f} s "
                                      f"(injected x{amount:g})")
                return
        injection.evidence = f"no window of the node's clock ran at x{amount:g}"

    # -- disks ---------------------------------------------------------------------------
    def _power_loss(self, injection: Injection) -> str:
        """Power loss on one node or on all at once: stop every process (a frozen instant),
        drop what was not fsynced, then kill them all; supervisord restarts them."""
        pids = self.target.pids()
        nodes = sorted({node for node, _ in pids})
        chosen = nodes if self.rng.random() < 0.5 else [self.rng.choice(nodes)]
        victims = {f"node{node}-{kind}": pid for (node, kind), pid in pids.items() if node in chosen}
        for pid in victims.values():
            signal_quietly(pid, signal.SIGSTOP)
        for node in chosen:
            self.target.cut_power(node)
        for pid in victims.values():
            signal_quietly(pid, signal.SIGKILL)  # a stopped process dies at once too
        injection.pids = victims
        return f"power loss on node(s) {chosen}"

    def _disk_full(self) -> str:
        self._disk_node = self.rng.randrange(1, len(self.target.hosts) + 1)
        taken = self.target.fill_disk(self._disk_node)
        self._disk_seen = ""
        self._disk_free = self.target.disk_free(self._disk_node)
        return f"node {self._disk_node} disk filled ({taken >> 20} MiB balloon)"

    def _bitflip(self, injection: Injection) -> str:
        """Damage synced data in one node's Raft log while its raft process is stopped, then
        kill it: the restart must notice (the checksums), never serve from it, move the
        damaged log aside and recover from its peers (or, where it cannot, refuse to start:
        then the nemesis undoes the flip on heal, as an operator would)."""
        pids = self.target.pids()
        node = self.rng.choice(sorted({n for n, _ in pids}) or [1])
        self._flip_node = node
        log = self.target.process_log(node, "raft")
        self._flip_log_from = log.stat().st_size if log.exists() else 0
        pid = pids.get((node, "raft"))
        if pid:
            signal_quietly(pid, signal.SIGSTOP)
        self._flip = flip_synced_entry_bit(self.target.log_dir(node), self.rng)
        if pid:
            signal_quietly(pid, signal.SIGKILL)
            injection.pids = {f"node{node}-raft": pid}
        return f"node {node}: {self._flip.describe()}" if self._flip else f"node {node}: no synced entry to damage"

    def _settle_bitflip(self, injection: Injection) -> None:
        log = self.target.process_log(self._flip_node, "raft")
        try:
            with open(log, errors="replace") as text:
                text.seek(self._flip_log_from)
                lines = [line.strip() for line in text if "corrupt" in line.lower()]
        except OSError:
            lines = []
        restored = undo_flip(self._flip) if self._flip else False
        injection.fired = self._flip is not None and bool(lines)
        said = lines[0].split(": ", 1)[-1] if lines else ""
        seen = f"node said: {said[:300]}" if lines else "the node never reported the damage"
        injection.evidence = seen + ("; the nemesis restored the bit (the node had not salvaged its log)"
                                     if restored else "")

    def _slow_disk(self) -> str:
        self._slow_node = self.rng.randrange(1, len(self.target.hosts) + 1)
        delay = self.rng.choice((20, 100, 500))
        self._slowed_before = self.target.slowed_syncs(self._slow_node)
        self.target.slow_disk(self._slow_node, delay)
        return f"node {self._slow_node}: every fsync stalls {delay} ms"

    def _settle_slow_disk(self, injection: Injection) -> None:
        self.target.slow_disk(self._slow_node, 0)
        slowed = self.target.slowed_syncs(self._slow_node) - self._slowed_before
        injection.fired = slowed > 0
        injection.evidence = f"{slowed} fsyncs stalled"

    def observe(self) -> None:
        """Collect evidence while a fault is held (called by the runner every ~0.5 s)."""
        if self.current is not None and self.current.fault == "clock" and self._clock_change[0] == "rate":
            sample = self._sample_clock()
            if sample is not None:
                self._clock_samples.append(sample)
        if self.current is not None and self.current.fault == "disk-full":
            self._disk_free = max(self._disk_free, self.target.disk_free(self._disk_node))
            if not self._disk_seen:
                self._disk_seen = self.target.disk_report(self._disk_node)

    def _settle_disk_full(self, injection: Injection) -> None:
        self.observe()
        self.target.drain_disk(self._disk_node)
        injection.fired = 0 <= self._disk_free <= FULL_DISK_SLACK
        noticed = f"node reported: {self._disk_seen[:100]}" if self._disk_seen else "node did not need space"
        injection.evidence = f"at most {self._disk_free} bytes free while held; {noticed}"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, fault: str) -> Injection:
        """Inject `fault`; the caller heals it with `heal()` after holding it."""
        if self.current is not None:
            raise RuntimeError("heal the current fault before starting another")
        injection = Injection(fault, "", self.clock())
        self._pids_before = {} if fault in KILLING_FAULTS else self.target.pids()
        if fault.startswith("partition"):
            injection.detail = self._partition(fault)
        elif fault == "loss":
            injection.detail = self._loss()
        elif fault in ("kill", "kill-node"):
            injection.detail = self._kill(fault, injection)
        elif fault == "pause":
            injection.detail = self._pause(injection)
        elif fault == "clock":
            injection.detail = self._skew()
        elif fault == "power-loss":
            injection.detail = self._power_loss(injection)
        elif fault == "disk-full":
            injection.detail = self._disk_full()
        elif fault == "bitflip":
            injection.detail = self._bitflip(injection)
        elif fault == "slow-disk":
            injection.detail = self._slow_disk()
        elif fault in SNAPSHOT_FAULTS:
            injection.detail, injection.pids = self._installs.strike(fault)
        elif fault in MEMBERSHIP_FAULTS:
            injection.detail, injection.pids = self._members.strike(fault)
        else:
            raise ValueError(f"unknown fault {fault!r}")
        self.current = injection
        return injection

    def heal(self) -> Injection | None:
        """Undo the current fault and settle its evidence."""
        injection, self.current = self.current, None
        if injection is None:
            return None
        if injection.fault in NETWORK_FAULTS:
            dropped = self.firewall.dropped_packets()
            self.firewall.heal()
            injection.fired = dropped > 0
            injection.evidence = f"{dropped} packets between nodes dropped"
        elif injection.fault == "pause":
            for pid in self._stopped:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self._stopped.clear()
        elif injection.fault in ("kill", "kill-node", "power-loss"):
            self._settle_kill(injection)
        elif injection.fault == "disk-full":
            self._settle_disk_full(injection)
        elif injection.fault == "bitflip":
            self._settle_bitflip(injection)
        elif injection.fault == "slow-disk":
            self._settle_slow_disk(injection)
        elif injection.fault == "clock":
            self._settle_clock(injection)
        elif injection.fault in SNAPSHOT_FAULTS:
            self._settle_install(injection)
        elif injection.fault in MEMBERSHIP_FAULTS:
            injection.fired, injection.evidence = self._members.evidence()
        self._check_no_crash(injection)
        injection.ended = self.clock()
        return injection

    def _check_no_crash(self, injection: Injection) -> None:
        """Under a fault that kills nothing, every process must still run under its PID."""
        if not self._pids_before:
            return
        now = self.target.pids()
        crashed = sorted(f"node{node}-{kind}" for (node, kind), pid in self._pids_before.items()
                         if now.get((node, kind)) != pid)
        if crashed:
            injection.problem = f"process(es) restarted or gone under {injection.fault}: {', '.join(crashed)}"

    def _settle_install(self, injection: Injection) -> None:
        """A snapshot fault bit if it caught a transfer in flight and, for the kills, the
        victims ran anew; for the bit flip, if the store refused the image."""
        killed = True
        if injection.pids:
            self._settle_kill(injection)
            killed = injection.fired
        caught, seen = self._installs.evidence(injection.fault)
        injection.fired = killed and caught
        injection.evidence = seen + (f"; {injection.evidence}" if injection.pids else "")

    def _settle_kill(self, injection: Injection) -> None:
        """A kill bit if each victim PID is gone and supervisord runs the program anew."""
        deadline = time.monotonic() + 10.0
        names = injection.pids
        while True:
            now = {f"node{node}-{kind}": pid for (node, kind), pid in self.target.pids().items()}
            restarted = [name for name, old in names.items() if now.get(name) not in (None, old)]
            if len(restarted) == len(names) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        gone = all(process_state(pid) in ("gone", "Z") for pid in names.values())
        injection.fired = bool(names) and gone and len(restarted) == len(names)
        injection.evidence = (f"old PIDs gone: {gone}; restarted under new PIDs: {restarted}"
                              if names else "nothing was killed")

    def close(self) -> None:
        """Heal whatever is still in force (SIGCONT paused processes, drop all rules)."""
        self.heal()
        self.firewall.heal()


_SS_LINE = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+)\s+(\d+\.\d+\.\d+\.\d+):(\d+)")


def connections_between_nodes(hosts: Sequence[str], raft_ports: Sequence[int]) -> tuple[int, int]:
    """(connections from a node address to a raft port, connections from elsewhere to one).

    The second must be 0 for iptables rules written per node address to cut anything; if a
    node dialled its peers from 127.0.0.1 a partition would silently be fake."""
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True,
                         timeout=30).stdout
    ports = {str(p) for p in raft_ports}
    pinned = other = 0
    for match in _SS_LINE.finditer(out):
        local, _, peer, peer_port = match.groups()
        if peer_port in ports and peer in hosts:
            if local in hosts:
                pinned += 1
            else:
                other += 1
    return pinned, other
