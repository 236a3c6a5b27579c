"""`zraft chaos`: run a local 3-node cluster, drive clients, inject faults, check the history.

One run:
1. start a cluster under supervisord with each node on its own 127.0.0.x address;
2. create the workload's tables, start the client threads (spread over all nodes);
3. warm up fault-free and measure the throughput (a run below `min_rate` is invalid);
4. check that nodes talk to each other from their own addresses (otherwise a partition
   written per address would cut nothing and the run would be a fake pass);
5. inject seeded faults, each held for `interval` seconds then healed, with a quiet
   `interval` in between; each fault must show evidence that it bit;
6. heal everything, let the clients run on through a recovery phase, then stop them;
7. one final write must succeed (the cluster recovered); for set and bank, each node is
   read once it has caught up with that write;
8. check the history (zraft.chaos.checker) and write `summary.json` beside it.

Everything a run produced stays in `--out/run-NNN/`: `history.jsonl` (re-checkable by any
checker that reads the documented format), `summary.json`, and the cluster's logs.

Counting: a checker "unknown", a violation and a cluster that does not recover each count
as violations; an acknowledged element missing from a final read counts as lost; a run
whose faults did not fire or whose throughput was too low is invalid, never a pass.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from zraft import cluster
from zraft.chaos.checker import Report, check_history
from zraft.chaos.disks import DATA_SUBDIR, NodeDisks, mount_points
from zraft.chaos.history import HistoryError, HistoryWriter, Outcome, load_history
from zraft.chaos.nemesis import (
    ALL_FAULTS,
    Firewall,
    Injection,
    Nemesis,
    connections_between_nodes,
)
from zraft.chaos.workloads import Indeterminate, NodeClient, OpPlan, Refused, Workload, make_workload
from zraft.config import RaftSettings, load

NODES = 3
"""Nodes per cluster unless --nodes says otherwise (3 or 5)."""
WARMUP_S = 5.0
RECOVERY_S = 10.0
FINAL_WRITE_S = 30.0
MARKER_TABLE = "chaos_marker"
SEGMENT_BYTES = 4 << 20
"""Small log segments: rollover happens within a run, and preallocation stays cheap on
lazyfs (which has no fallocate) and on a small tmpfs."""
SNAPSHOT_SETTINGS = dict(snapshot_threshold=100, trailing_logs=50, snapshot_interval_ms=500)
"""Compact often, so that every fault also lands on compactions, image transfers and installs:
a node killed, paused, cut off or power-cycled for a few seconds falls behind the leader's log
start and comes back through an image (zraft/procs/DESIGN.md, snapshots)."""


@dataclass(frozen=True)
class ChaosOptions:
    runs: int = 1
    time_s: float = 60.0
    workload: str = "register"
    faults: tuple[str, ...] = ALL_FAULTS
    seed: int = 0
    out: Path = Path("chaos-out")
    http_port: int = 4401
    first_host: int = 2
    concurrency: int = 6
    rate: float = 200.0
    interval_s: float = 5.0
    read_levels: tuple[str, ...] = ()
    min_rate: float = 50.0
    nodes: int = NODES

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.{self.first_host + i}" for i in range(self.nodes)]


@dataclass
class RunResult:
    index: int
    seed: int
    directory: Path
    ops: int = 0
    violations: int = 0
    lost: int = 0
    baseline_rate: float = 0.0
    invalid: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    injections: list[Injection] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    report: str = ""

    @property
    def valid(self) -> bool:
        return not self.invalid

    def to_json(self) -> dict[str, object]:
        return {"run": self.index, "seed": self.seed, "ops": self.ops, "violations": self.violations,
                "lost": self.lost, "valid": self.valid, "invalid": self.invalid,
                "problems": self.problems, "baseline_ops_per_s": round(self.baseline_rate, 1),
                "outcomes": self.outcomes,
                "faults": [i.to_json() for i in self.injections], "checker": self.report}


class LocalTarget:
    """The running cluster as the nemesis sees it."""

    def __init__(self, directory: Path, hosts: Sequence[str], disks: dict[int, NodeDisks]) -> None:
        self.directory, self.hosts, self.disks = directory, list(hosts), disks
        self.configs = [load(p) for p in sorted(directory.glob("node*/zraft.toml"),
                                                key=lambda p: int(p.parent.name[4:]))]

    def pids(self) -> dict[tuple[int, str], int]:
        out = {}
        for name, pid in cluster.program_pids(self.directory).items():
            node, _, kind = name.partition("-")
            out[(int(node.removeprefix("node")), kind)] = pid
        return out

    def leader(self) -> int | None:
        return next((c.id for c in self.configs if cluster.is_leader(c)), None)

    def set_clock(self, node: int, spec: str) -> None:
        path = self.directory / f"node{node}" / "faketime.rc"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(spec + "\n")
        temporary.replace(path)  # a process never reads a half-written spec

    def _status(self, node: int) -> dict[str, Any]:
        http = self.configs[node - 1].me().http
        try:
            with urllib.request.urlopen(f"http://{http}/status", timeout=5) as response:
                doc = json.loads(response.read())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def node_time(self, node: int) -> float | None:
        try:
            return datetime.fromisoformat(self._status(node)["node"]["current_time"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return None

    def cut_power(self, node: int) -> None:
        self.disks[node].cut()

    def fill_disk(self, node: int) -> int:
        return self.disks[node].fill()

    def drain_disk(self, node: int) -> None:
        self.disks[node].drain()

    def disk_free(self, node: int) -> int:
        return self.disks[node].free_bytes()

    def log_dir(self, node: int) -> Path:
        return self.configs[node - 1].log_dir

    def slow_disk(self, node: int, delay_ms: int) -> None:
        self.disks[node].slow(delay_ms)

    def slowed_syncs(self, node: int) -> int:
        return self.disks[node].slowed_syncs()

    def process_log(self, node: int, kind: str) -> Path:
        return self.directory / f"node{node}" / f"{kind}.log"

    def raft_state(self, node: int) -> dict[str, int]:
        raft = self._status(node).get("store", {}).get("raft", {})
        return {k: v for k, v in raft.items() if isinstance(v, int)} if isinstance(raft, dict) else {}

    def data_dir(self, node: int) -> Path:
        return self.configs[node - 1].db_path.parent

    def next_index(self, leader: int, node: int) -> int:
        progress = self._status(leader).get("store", {}).get("raft", {}).get("progress", {})
        entry = progress.get(str(node), {}) if isinstance(progress, dict) else {}
        value = entry.get("next", 0) if isinstance(entry, dict) else 0
        return value if isinstance(value, int) else 0

    def transfer(self, via: int, to: int) -> str:
        http = self.configs[via - 1].me().http
        request = urllib.request.Request(f"http://{http}/leader?wait&timeout=5s", method="POST",
                                         data=json.dumps({"id": str(to)}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return "" if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            return str(exc)

    def restart_node(self, node: int) -> None:
        conf = self.directory / "supervisord.conf"
        programs = [f"node{node}-{kind}" for kind in ("api", "store", "raft")]
        for action, names in (("stop", programs), ("start", programs[::-1])):
            subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), action, *names],
                           capture_output=True, text=True, timeout=60)

    def disk_report(self, node: int) -> str:
        store = self._status(node).get("store", {})
        for section in (store.get("raft", {}), store.get("fsm", {})):
            if isinstance(section, dict) and section.get("disk_full"):
                return str(section["disk_full"])
        return ""


class Workers:
    """Client threads: each is pinned to one node and records every operation."""

    def __init__(self, workload: Workload, history: HistoryWriter, https: Sequence[str],
                 options: ChaosOptions, seed: int) -> None:
        self.workload, self.history, self.options = workload, history, options
        self.https, self.seed = list(https), seed
        self.stop = threading.Event()
        self.ok = Counter[int]()
        self._threads = [threading.Thread(target=self._loop, args=(i,), name=f"chaos-client-{i}", daemon=True)
                         for i in range(options.concurrency)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def ok_count(self) -> int:
        return sum(self.ok.values())

    def _loop(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        client = NodeClient(self.https[worker % len(self.https)])
        process = worker
        period = self.options.concurrency / self.options.rate if self.options.rate > 0 else 0.0
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                next_at = max(next_at + period, time.monotonic() - period)
                delay = next_at - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    break
                outcome = perform(self.workload, client, self.workload.plan(rng), self.history, process)
                if outcome == "info":
                    process += self.options.concurrency  # an unknown outcome stays open forever
                elif outcome == "ok":
                    self.ok[worker] += 1
        finally:
            client.close()


def perform(workload: Workload, client: NodeClient, op: OpPlan, history: HistoryWriter,
            process: int | str) -> Outcome:
    """Invoke, perform and complete one operation, recording both ends; return the outcome."""
    history.invoke(process, op.f, op.key, op.value)
    outcome: Outcome = "ok"
    try:
        result = workload.perform(client, op)
    except Refused:
        outcome, result = "fail", op.value
    except Indeterminate:
        outcome, result = "info", op.value
    history.complete(process, outcome, op.f, op.key, result if op.f == "read" else op.value)
    return outcome


def _retry(action: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            action()
            return True
        except (Refused, Indeterminate):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.3)


BALLAST_MIB = 16
"""A table of this many MiB of zeros makes every image many chunks long, so that the snapshot
faults (zraft.chaos.installs) can catch a transfer in flight."""


def _setup_schema(workload: Workload, https: Sequence[str]) -> None:
    statements = workload.schema() + [
        f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (id INTEGER PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS chaos_ballast (b BLOB)",
        f"INSERT INTO chaos_ballast SELECT zeroblob(1048576) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
        f"SELECT i + 1 FROM n WHERE i < {BALLAST_MIB}) SELECT i FROM n)"]
    client = NodeClient(https[0])
    try:
        if not _retry(lambda: client.execute(statements), 30.0):
            raise RuntimeError(f"could not create the {workload.name} tables through {https[0]}")
    finally:
        client.close()


def _final_write(https: Sequence[str], marker: int) -> bool:
    """One write that must succeed after healing: through any node, within FINAL_WRITE_S."""
    clients = [NodeClient(h) for h in https]
    attempts = iter(range(10**9))
    try:
        def attempt() -> None:
            client = clients[next(attempts) % len(clients)]
            client.execute([[f"INSERT OR IGNORE INTO {MARKER_TABLE} (id) VALUES (?)", marker]])
        return _retry(attempt, FINAL_WRITE_S)
    finally:
        for client in clients:
            client.close()


def _final_reads(workload: Workload, history: HistoryWriter, https: Sequence[str], marker: int) -> list[str]:
    """On each node, once it has applied the final write, record the workload's final read."""
    problems = []
    for node, address in enumerate(https, start=1):
        client = NodeClient(address)
        try:
            def caught_up() -> None:
                rows = client.query([[f"SELECT count(*) FROM {MARKER_TABLE} WHERE id = ?", marker]], "none")
                if not rows[0].get("values") or rows[0]["values"][0][0] != 1:
                    raise Refused("not caught up yet")
            if not _retry(caught_up, FINAL_WRITE_S):
                problems.append(f"node {node} did not apply the final write within {FINAL_WRITE_S:.0f} s")
                continue
            op = workload.final_read(client)
            if op is not None and perform(workload, client, op, history, f"final-{node}") != "ok":
                problems.append(f"node {node}: the final read failed")
        finally:
            client.close()
    return problems


def run_once(options: ChaosOptions, index: int, seed: int, echo: Callable[[str], None]) -> RunResult:
    directory = (options.out / f"run-{index:03d}").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    result = RunResult(index, seed, directory)
    rng = random.Random(seed)
    workload = make_workload(options.workload, options.read_levels or None)
    cluster_dir = directory / "cluster"
    history_path = directory / "history.jsonl"
    history_path.unlink(missing_ok=True)
    _fresh(cluster_dir)
    lazy = bool({"power-loss", "slow-disk", "install-power-loss"} & set(options.faults))
    disks = {node: NodeDisks(cluster_dir / f"node{node}", lazy,
                             "disk-full" in options.faults, seed) for node in range(1, options.nodes + 1)}
    firewall: Firewall | None = None
    try:
        for disk in disks.values():
            disk.setup()
        Firewall.sweep_orphans()
        cluster.up(cluster_dir, options.nodes, options.http_port, timeout_s=60.0, hosts=options.hosts,
                   fake_clock="clock" in options.faults, data_subdir=DATA_SUBDIR,
                   raft=RaftSettings(segment_bytes=SEGMENT_BYTES, **SNAPSHOT_SETTINGS))
        firewall = Firewall.for_run(index)
        target = LocalTarget(cluster_dir, options.hosts, disks)
        https = [c.me().http for c in target.configs]
        _setup_schema(workload, https)
        nemesis = Nemesis(target, firewall, rng)
        with HistoryWriter(history_path) as history:
            workers = Workers(workload, history, https, options, seed)
            workers.start()
            try:
                _drive(options, result, workers, nemesis, target, echo)
            finally:
                nemesis.close()
                workers.join()
            marker = rng.randrange(1, 2**62)
            if not _final_write(https, marker):
                result.problems.append(f"the cluster did not accept a write within {FINAL_WRITE_S:.0f} s "
                                       "of healing")
            else:
                result.problems += _final_reads(workload, history, https, marker)
    finally:
        if firewall is not None:
            firewall.close()
        cluster.down(cluster_dir)
        for disk in disks.values():
            disk.close()
    _check(result, history_path, workload)
    (directory / "summary.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _fresh(cluster_dir: Path) -> None:
    """Every run starts from empty data folders; refuse to delete under a live mount."""
    if not cluster_dir.exists():
        return
    prefix = str(cluster_dir.resolve()) + "/"
    live = [point for point in mount_points() if point.startswith(prefix)]
    if live:
        raise RuntimeError(f"{cluster_dir} still has mounts ({', '.join(live)}); unmount them first")
    shutil.rmtree(cluster_dir)


def _drive(options: ChaosOptions, result: RunResult, workers: Workers, nemesis: Nemesis,
           target: LocalTarget, echo: Callable[[str], None]) -> None:
    """Warm up, then inject faults until the recovery phase, then let the clients recover."""
    start = time.monotonic()
    warmup = min(WARMUP_S, options.time_s / 4)
    time.sleep(warmup)
    result.baseline_rate = workers.ok_count() / warmup
    if result.baseline_rate < options.min_rate:
        result.invalid.append(f"throughput before the first fault was {result.baseline_rate:.0f} ops/s "
                              f"(< {options.min_rate:g})")
    raft_ports = [int(c.me().raft.rsplit(":", 1)[1]) for c in target.configs]
    pinned, stray = connections_between_nodes(target.hosts, raft_ports)
    if stray or not pinned:
        result.invalid.append(f"node-to-node connections not all from node addresses ({pinned} pinned, "
                              f"{stray} from elsewhere): a partition would cut nothing")
    fault_end = start + options.time_s - min(RECOVERY_S, options.time_s / 4)
    while time.monotonic() + options.interval_s <= fault_end:
        injection = nemesis.start(nemesis.rng.choice(options.faults))
        echo(f"  {time.monotonic() - start:6.1f}s  {injection.fault}: {injection.detail}")
        hold_end = time.monotonic() + options.interval_s
        while time.monotonic() < hold_end:
            nemesis.observe()
            time.sleep(min(0.5, max(0.0, hold_end - time.monotonic())))
        nemesis.heal()
        result.injections.append(injection)
        if injection.problem:
            result.problems.append(injection.problem)
        echo(f"  {time.monotonic() - start:6.1f}s  healed ({'fired' if injection.fired else 'DID NOT FIRE'}: "
             f"{injection.evidence})")
        time.sleep(min(options.interval_s, max(0.0, fault_end - time.monotonic())))
    if not result.injections:
        result.invalid.append("no fault was injected (--time too short for --interval)")
    for injection in result.injections:
        if not injection.fired:
            result.invalid.append(f"{injection.fault} ({injection.detail}) did not fire: {injection.evidence}")
    time.sleep(max(0.0, start + options.time_s - time.monotonic()))


def _check(result: RunResult, history_path: Path, workload: Workload) -> None:
    total = getattr(workload, "total", None)
    try:
        ops = load_history(history_path)
        report: Report = check_history(ops, workload.name,  # type: ignore[arg-type]
                                       bank_total=total)
    except HistoryError as exc:
        result.invalid.append(f"the history could not be read: {exc}")
        return
    result.ops = report.ops
    result.outcomes = dict(Counter(op.outcome for op in ops))
    result.violations = report.violations + report.unknown + len(result.problems)
    result.lost = report.lost
    result.report = report.summary()


@dataclass
class CampaignResult:
    runs: list[RunResult]

    @property
    def ops(self) -> int:
        return sum(r.ops for r in self.runs)

    @property
    def violations(self) -> int:
        return sum(r.violations for r in self.runs)

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.runs)

    @property
    def invalid(self) -> int:
        return sum(1 for r in self.runs if not r.valid)

    @property
    def passed(self) -> bool:
        return bool(self.runs) and not (self.violations or self.lost or self.invalid)

    def per_fault(self) -> list[str]:
        """One line per fault type: injections, how many fired, runs with a problem."""
        lines = []
        for fault in sorted({i.fault for r in self.runs for i in r.injections}):
            injected = [i for r in self.runs for i in r.injections if i.fault == fault]
            bad_runs = [r for r in self.runs if any(i.fault == fault for i in r.injections)
                        and (r.violations or r.lost)]
            lines.append(f"  {fault:<18} injected {len(injected):4d}, fired {sum(i.fired for i in injected):4d}, "
                         f"in runs with violations or losses: {len(bad_runs)}")
        return lines

    def last_line(self) -> str:
        return (f"{len(self.runs)} runs, {self.ops} ops, {self.violations} violations, "
                f"{self.lost} lost, {self.invalid} invalid")


def run_campaign(options: ChaosOptions, echo: Callable[[str], None] = print) -> CampaignResult:
    """Run `options.runs` runs one after another, each on a fresh cluster, seeded from `seed`."""
    runs = []
    for index in range(options.runs):
        seed = options.seed + index
        echo(f"run {index + 1}/{options.runs}: workload {options.workload}, seed {seed}, "
             f"{options.time_s:g} s, faults {','.join(options.faults)}")
        result = run_once(options, index, seed, echo)
        status = "VALID" if result.valid else "INVALID"
        outcomes = ", ".join(f"{n} {kind}" for kind, n in sorted(result.outcomes.items()))
        echo(f"  {status}: {result.ops} ops ({outcomes}), {result.violations} violations, {result.lost} lost, "
             f"{result.baseline_rate:.0f} ops/s before faults")
        echo(f"    {result.report.splitlines()[0] if result.report else 'not checked'}")
        for line in result.invalid + result.problems + result.report.splitlines()[1:6]:
            echo(f"    {line}")
        runs.append(result)
    campaign = CampaignResult(runs)
    for line in campaign.per_fault():
        echo(line)
    (options.out / "campaign.json").write_text(json.dumps(
        {"runs": [r.to_json() for r in runs], "summary": campaign.last_line()}, indent=2) + "\n")
    echo(campaign.last_line())
    return campaign
