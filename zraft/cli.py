"""The `zraft` command: a thin click layer that parses arguments and calls into the package."""

from __future__ import annotations

import os
import sys
import time

import click

from zraft import __version__


@click.group()
@click.version_option(__version__, prog_name="zraft")
def main() -> None:
    """zraft: fault-tolerant SQLite over Raft."""


@main.command()
@click.option("--seeds", type=click.IntRange(min=1), default=100, show_default=True,
              help="How many seeds to run (seeds first-seed .. first-seed+N-1).")
@click.option("--steps", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Events per seed while faults are injected.")
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True,
              help="Voters at bootstrap (two spare nodes can join as learners).")
@click.option("--seed", type=int, default=None,
              help="Run only this seed and print the hash of its whole trace.")
@click.option("--first-seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: number of CPUs].")
def sim(seeds: int, steps: int, nodes: str, seed: int | None, first_seed: int, jobs: int | None) -> None:
    """Run the real Raft core through a seeded, fault-injecting simulator."""
    from zraft.sim.runner import run_many, run_seed, summarize

    node_count = int(nodes)
    start = time.perf_counter()
    if seed is not None:
        result = run_seed(seed, steps, node_count)
        click.echo(f"seed {seed}: {result.events} events, trace hash {result.trace_hash}")
        results = iter([result])
    else:
        results = run_many(range(first_seed, first_seed + seeds), steps, node_count,
                           jobs or os.cpu_count() or 1)
    summary = summarize(results, click.echo)
    elapsed = time.perf_counter() - start
    click.echo(f"{summary.events} events in {elapsed:.1f} s: {summary.events / max(elapsed, 1e-9):,.0f} events/s")
    click.echo(summary.line())
    if summary.violations or summary.liveness_failures:
        sys.exit(1)


@main.group()
def run() -> None:
    """Run one of a node's processes in the foreground (as supervisord or systemd do)."""


def _run_process(name: str, config_path: str) -> None:
    import importlib
    import logging

    from zraft.config import ConfigError, load
    from zraft.procs.shell import bound_heap

    bound_heap()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    try:
        config = load(config_path)
    except ConfigError as exc:
        click.echo(f"zraft run {name}: {exc}", err=True)
        sys.exit(2)
    module = importlib.import_module(f"zraft.procs.{name}_proc")
    sys.exit(module.run(config))


_CONFIG = click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
                       help="The node's TOML config (see config/zraft.example.toml).")


@run.command("raft")
@_CONFIG
def run_raft(config_path: str) -> None:
    """Raft consensus: the core, the durable log and the peer transport."""
    _run_process("raft", config_path)


@run.command("store")
@_CONFIG
def run_store(config_path: str) -> None:
    """The SQLite state machine: applies committed entries and serves queries."""
    _run_process("store", config_path)


@run.command("api")
@_CONFIG
def run_api(config_path: str) -> None:
    """The client API: rqlite-compatible HTTP plus the native ZeroMQ endpoint."""
    _run_process("api", config_path)


@main.group()
def cluster() -> None:
    """A local cluster under supervisord, for trying zraft out and for tests."""


_DIR = click.option("--dir", "directory", type=click.Path(file_okay=False), default="zraft-cluster",
                    show_default=True, help="Folder holding the cluster's configs, data and logs.")


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@_DIR
@click.option("--http-port", type=click.IntRange(1024, 65000), default=4001, show_default=True,
              help="Node i serves HTTP on PORT + 2(i-1).")
@click.option("--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds to wait for a leader.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a node setting in every generated config, e.g. snapshot_threshold=500 or "
                   "store.read_workers=8 (repeatable; keys as in config/zraft.example.toml).")
def cluster_up(nodes: int, directory: str, http_port: int, timeout: float, overrides: tuple[str, ...]) -> None:
    """Start a local cluster and return once a leader is elected."""
    from pathlib import Path

    from zraft.cluster import ClusterError, up
    from zraft.config import ConfigError

    try:
        statuses = up(Path(directory), nodes, http_port, timeout, overrides=overrides)
    except (ClusterError, ConfigError) as exc:
        click.echo(f"zraft cluster up: {exc}", err=True)
        sys.exit(1)
    for node in statuses:
        role = "leader" if node.leader else "follower"
        click.echo(f"node {node.id}: http://{node.http} ({role})")


@cluster.command("status")
@_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cluster_status(directory: str, as_json: bool) -> None:
    """Show each node's address, leadership and process IDs."""
    from pathlib import Path

    import orjson

    from zraft.cluster import status

    statuses = status(Path(directory))
    if as_json:
        click.echo(orjson.dumps({"nodes": [s.to_json() for s in statuses]}).decode())
        return
    for node in statuses:
        pids = " ".join(f"{k}={v}" for k, v in node.pids.items())
        click.echo(f"node {node.id}: http://{node.http} {'leader' if node.leader else 'follower'} {pids}")


@cluster.command("transfer")
@_DIR
@click.option("--node", "node_id", type=click.IntRange(min=1), default=None,
              help="The node to hand leadership to (default: the most up-to-date voter).")
def cluster_transfer(directory: str, node_id: int | None) -> None:
    """Move leadership to another node (rqlite's POST /leader), and wait until it leads."""
    _cluster_change(directory, "POST", "/leader?wait", None if node_id is None else {"id": str(node_id)},
                    "leadership moved" + (f" to node {node_id}" if node_id else ""))


@cluster.command("remove")
@_DIR
@click.option("--node", "node_id", type=click.IntRange(min=1), required=True, help="The node to remove.")
def cluster_remove(directory: str, node_id: int) -> None:
    """Take a node out of the cluster (rqlite's DELETE /remove); its processes keep running
    until they are stopped."""
    _cluster_change(directory, "DELETE", "/remove", {"id": str(node_id)}, f"node {node_id} removed")


def _cluster_change(directory: str, method: str, path: str, body: dict[str, str] | None, done: str) -> None:
    from pathlib import Path

    from zraft.cluster import ClusterError, change

    try:
        via = change(Path(directory), method, path, body)
    except ClusterError as exc:
        click.echo(f"zraft cluster: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{done} (through {via})")


@cluster.command("down")
@_DIR
def cluster_down(directory: str) -> None:
    """Stop every process of the cluster; none is left behind."""
    from pathlib import Path

    from zraft.cluster import down

    down(Path(directory))


@main.command()
@click.option("--host", default="127.0.0.1:4001", show_default=True,
              help="The node to connect to: HOST:PORT (or a full URL).")
@click.option("--scheme", type=click.Choice(["http", "https"]), default="http", show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="HTTP timeout in seconds.")
def shell(host: str, scheme: str, timeout: float) -> None:
    """An interactive SQL shell like rqlite's (reads stdin plainly when it is not a terminal)."""
    from zraft.shell import run

    sys.exit(run(host, scheme, timeout))


@main.command()
@click.option("--http", "address", required=True, help="The node to back up from: HOST:PORT (or a full URL).")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@click.option("--fmt", type=click.Choice(["binary", "sql", "delete"]), default="binary", show_default=True,
              help="A SQLite file (binary and delete are the same in zraft: rollback-journal mode) or a SQL dump.")
@click.option("--compress", is_flag=True, help="gzip on the node; FILE is then gzip data.")
@click.option("--vacuum", is_flag=True, help="VACUUM the copy first (binary formats only).")
@click.option("--tables", default="", metavar="A,B", help="SQL dump only: just these tables.")
@click.option("--noleader", is_flag=True, help="Back up this node's own copy even when it is not the leader.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds to wait for the node at any one moment (not for the whole download).")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar on stderr [default: when stderr is a terminal].")
def backup(address: str, file: str, fmt: str, compress: bool, vacuum: bool, tables: str, noleader: bool,
           timeout: float, progress: bool | None) -> None:
    """Stream a backup of the database into FILE (written as FILE.part, renamed when complete)."""
    from pathlib import Path

    from zraft.download import BackupRequest, DownloadError, ProgressBar, download
    from zraft.shell import base_url

    request = BackupRequest(fmt=fmt, compress=compress, vacuum=vacuum, noleader=noleader,
                            tables=tuple(t.strip() for t in tables.split(",") if t.strip()))
    try:
        request.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with ProgressBar(Path(file).name, show) as bar:
            done = download(base_url(address, "http"), request, Path(file), timeout, bar)
    except DownloadError as exc:
        click.echo(f"zraft backup: {exc}", err=True)
        sys.exit(1)
    rate = done.size / max(done.seconds, 1e-6) / (1 << 20)
    click.echo(f"backup written to {file}: {done.size:,} bytes in {done.seconds:.1f} s ({rate:.1f} MiB/s) "
               f"from {done.url.split('/db/backup')[0]}", err=True)


@main.command()
@click.option("--http", "address", required=True, help="A node of the cluster: HOST:PORT (or a full URL).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--boot", is_flag=True,
              help="rqlite's /boot: only into a single-node cluster (a SQLite file); then add nodes.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds to wait for the node at any one moment; the wait for the answer grows with the size.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar on stderr [default: when stderr is a terminal].")
def restore(address: str, file: str, boot: bool, timeout: float, progress: bool | None) -> None:
    """Load FILE into the cluster, replacing its database: a SQLite file of any size (through
    the log in chunks), or a SQL dump (run as one transaction)."""
    from pathlib import Path

    from zraft.download import ProgressBar
    from zraft.shell import base_url
    from zraft.upload import UploadError, is_sqlite, upload

    path = Path(file)
    if boot and not is_sqlite(path):
        raise click.UsageError(f"{file} is not a SQLite file: --boot takes only those")
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with ProgressBar(path.name, show) as bar:
            done = upload(base_url(address, "http"), "/boot" if boot else "/db/load", path, timeout, bar)
    except UploadError as exc:
        click.echo(f"zraft restore: {exc}", err=True)
        sys.exit(1)
    kind = "SQLite file" if done.sqlite else "SQL dump"
    rate = done.size / max(done.seconds, 1e-6) / (1 << 20)
    click.echo(f"{kind} {file} loaded: {done.size:,} bytes in {done.seconds:.1f} s ({rate:.1f} MiB/s) "
               f"through {done.url.rsplit('/', 2)[0]}", err=True)


@main.command()
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs, one after another, each on a fresh cluster.")
@click.option("--time", "time_s", type=click.FloatRange(min=10), default=60.0, show_default=True,
              help="Seconds per run: warm-up, faults, then a fault-free recovery phase.")
@click.option("--workload", type=click.Choice(["register", "set", "bank"]), default="register",
              show_default=True)
@click.option("--nemesis", default="all", show_default=True,
              help="Comma-separated faults or groups: partition-halves, partition-leader, partition-bridge, "
                   "partition-asym, loss, kill, kill-node, pause, clock, power-loss, disk-full, slow-disk, bitflip, "
                   "install-kill, install-power-loss, install-bitflip, transfer, restart; groups: partition, snapshot, "
                   "membership, all.")
@click.option("--seed", type=int, default=None, help="Seed of the first run (default: from the clock, printed).")
@click.option("--out", type=click.Path(file_okay=False), default="chaos-out", show_default=True,
              help="Folder for each run's history, summary and cluster logs.")
@click.option("--http-port", type=click.IntRange(1024, 65000), default=4401, show_default=True)
@click.option("--first-host", type=click.IntRange(2, 250), default=2, show_default=True,
              help="Nodes listen on 127.0.0.N, N+1, N+2 (and so on).")
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True,
              help="Nodes in each run's cluster.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=6, show_default=True,
              help="Client threads, spread over the nodes.")
@click.option("--rate", type=click.FloatRange(min=1), default=200.0, show_default=True,
              help="Operations per second offered by all clients together.")
@click.option("--interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds each fault is held, and seconds of quiet between faults.")
@click.option("--read-level", "read_levels", multiple=True,
              type=click.Choice(["none", "weak", "linearizable", "strong"]),
              help="Read levels to use (repeatable; register default: linearizable and strong).")
def chaos(runs: int, time_s: float, workload: str, nemesis: str, seed: int | None, out: str, http_port: int,
          first_host: int, nodes: str, concurrency: int, rate: float, interval: float,
          read_levels: tuple[str, ...]) -> None:
    """Jepsen-style runs: faults against a local cluster, every history checked.

    The last line reads `R runs, O ops, V violations, L lost, I invalid`; the exit code is 0
    only when every run was valid with no violation and nothing lost. Needs root (iptables)."""
    import time as _time
    from pathlib import Path

    from zraft.chaos.nemesis import expand
    from zraft.chaos.runner import ChaosOptions, run_campaign

    try:
        faults = expand([n.strip() for n in nemesis.split(",") if n.strip()])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--nemesis") from None
    options = ChaosOptions(runs=runs, time_s=time_s, workload=workload, faults=faults,
                           seed=seed if seed is not None else int(_time.time()) % 100_000,
                           out=Path(out), http_port=http_port, first_host=first_host,
                           concurrency=concurrency, rate=rate, interval_s=interval,
                           read_levels=read_levels, nodes=int(nodes))
    _stop_cleanly_on_signals()
    campaign = run_campaign(options, click.echo)
    sys.exit(0 if campaign.passed else 1)


def _stop_cleanly_on_signals() -> None:
    """SIGTERM and SIGINT unwind the run, so its cleanup (firewall rules, mounts, cluster
    processes) happens. Without this, SIGTERM kills at once, and SIGINT is ignored by a
    command started in the background of a non-interactive shell."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


@main.command()
@click.option("--cases", type=click.IntRange(min=1), default=100, show_default=True,
              help="Generated cases, each checked on every node when it ends.")
@click.option("--seed", type=int, default=None, help="Seed of the generator (default: from the clock, printed).")
@click.option("--per-cluster", type=click.IntRange(min=1), default=25, show_default=True,
              help="Cases per cluster lifetime (each lifetime: a fresh cluster, clocks and zones rotated).")
@click.option("--out", type=click.Path(file_okay=False), default="diverge-out", show_default=True,
              help="Folder for summary.json, each divergent case's statements and its cluster's logs.")
@click.option("--http-port", type=click.IntRange(0, 65000), default=0, show_default=True,
              help="Node i serves HTTP on PORT + 2(i-1); 0 picks free ports.")
@click.option("--kill-rate", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of cases during which a store is killed (-9) mid-request.")
@click.option("--clocks", default="+0,+3600,-7200", show_default=True,
              help="libfaketime spec of each node's wall clock, node 1 first.")
@click.option("--zones", default=None, help="TZ of each node's processes, node 1 first [default: "
              "UTC,America/New_York,Asia/Kathmandu, or POSIX TZ strings with the same offsets without tzdata].")
@click.option("--no-escapes", is_flag=True, help="Leave out temp objects, total_changes() and pragma_database_list.")
@click.option("--no-sources", is_flag=True,
              help="Leave out time and randomness too: a control run, where any divergence is the store's "
                   "or the harness's.")
@click.option("--only-case", type=click.IntRange(min=0), default=None,
              help="Run only this case of the seed (as printed for a divergence).")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Run exactly the case saved in this file (OUT/case-NNNN.json, written for each divergence).")
@click.option("--stop-after", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop once this many cases have diverged (0: never).")
@click.option("--keep", is_flag=True, help="Keep every cluster folder, not only those that diverged.")
@click.option("--nondeterministic-apply", is_flag=True,
              help="TEST ONLY: stores apply without the deterministic overrides (shows that the test bites).")
def diverge(cases: int, seed: int | None, per_cluster: int, out: str, http_port: int, kill_rate: float,
            clocks: str, zones: str | None, no_escapes: bool, no_sources: bool, only_case: int | None,
            replay: str | None, stop_after: int, keep: bool,
            nondeterministic_apply: bool) -> None:
    """Hunt for replicas that differ: generated statements that reach every source of time
    and randomness, nodes under different clocks and time zones, stores killed at random.

    The last line reads `C cases, S statements, T tables compared, D divergences, ...`; the exit
    code is 0 only when no table differed between nodes and every case finished."""
    import time as _time
    from pathlib import Path

    try:
        from zraft.chaos.divergence import DEFAULT_ZONES, DivergeOptions, run
        from zraft.chaos.sqlgen import Grammar
    except ImportError as exc:  # hypothesis comes with the test extra
        click.echo(f"zraft diverge: {exc}; install the test extra: pip install -e '.[test]'", err=True)
        sys.exit(2)

    chosen = seed if seed is not None else int(_time.time()) % 100_000
    click.echo(f"zraft diverge --seed {chosen} --cases {cases} --per-cluster {per_cluster}")
    options = DivergeOptions(cases=cases, seed=chosen, per_cluster=per_cluster, out=Path(out), http_port=http_port,
                             kill_rate=kill_rate, clocks=tuple(c.strip() for c in clocks.split(",")),
                             zones=tuple(z.strip() for z in zones.split(",")) if zones else DEFAULT_ZONES,
                             grammar=Grammar(sources=not no_sources, escapes=not (no_escapes or no_sources)),
                             only_case=only_case, replay=Path(replay) if replay else None, stop_after=stop_after,
                             keep=keep,
                             nondeterministic_apply=nondeterministic_apply)
    _stop_cleanly_on_signals()
    try:
        summary = run(options, click.echo)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(0 if summary.passed else 1)
