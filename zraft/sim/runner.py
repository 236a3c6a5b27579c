"""Runs many seeded simulations (in parallel worker processes) and summarizes them."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from zraft.sim.simulator import CoreFactory, Simulation
from zraft.raft import RaftCore


@dataclass(frozen=True)
class SeedResult:
    seed: int
    nodes: int
    steps: int
    events: int
    violations: tuple[str, ...]
    live: bool
    trace_hash: str


def run_seed(seed: int, steps: int, nodes: int, core_factory: CoreFactory = RaftCore,
             check_liveness: bool = True, vote_floor: bool = True, damage: bool = True,
             wipe: bool = True, recover_blank: bool = True) -> SeedResult:
    """One seeded run: `steps` events of faults, then (optionally) heal and check liveness.
    `vote_floor=False` restarts damaged nodes without their vote floor, `recover_blank=False`
    lets wiped nodes vote at once (planted bugs); `damage=False` and `wipe=False` leave out
    those faults altogether."""
    sim = Simulation(seed, nodes=nodes, core_factory=core_factory, vote_floor=vote_floor, damage=damage,
                     wipe=wipe, recover_blank=recover_blank)
    sim.run(steps)
    live = True
    if check_liveness and not sim.checker.violations:
        live = sim.heal_and_check_liveness()
    violations = tuple(str(v) for v in sim.checker.violations[:5])
    return SeedResult(seed, nodes, steps, sim.events, violations, live, f"{sim.trace:016x}")


def _run_args(args: tuple[int, int, int]) -> SeedResult:
    seed, steps, nodes = args
    return run_seed(seed, steps, nodes)


def run_many(seeds: Iterable[int], steps: int, nodes: int, jobs: int) -> Iterator[SeedResult]:
    """Yield results in seed order; worker processes share nothing, so order is irrelevant
    to each run's outcome."""
    work = [(seed, steps, nodes) for seed in seeds]
    if jobs <= 1:
        yield from map(_run_args, work)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_run_args, work, chunksize=4)


def replay_command(seed: int, steps: int, nodes: int) -> str:
    return f"zraft sim --seed {seed} --steps {steps} --nodes {nodes}"


@dataclass
class Summary:
    seeds: int = 0
    steps: int = 0
    events: int = 0
    violations: int = 0
    liveness_failures: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.seeds} seeds, {self.steps} steps, {self.violations} violations, "
                f"{self.liveness_failures} liveness failures")


def summarize(results: Iterable[SeedResult], echo: Callable[[str], None]) -> Summary:
    summary = Summary()
    start = time.perf_counter()
    for result in results:
        summary.seeds += 1
        summary.steps += result.steps
        summary.events += result.events
        if result.violations:
            summary.violations += 1
            echo(f"VIOLATION seed {result.seed}: {result.violations[0]}")
            echo(f"  replay: {replay_command(result.seed, result.steps, result.nodes)}")
        elif not result.live:
            summary.liveness_failures += 1
            echo(f"LIVENESS FAILURE seed {result.seed}: no proposal committed after healing")
            echo(f"  replay: {replay_command(result.seed, result.steps, result.nodes)}")
    summary.seconds = time.perf_counter() - start
    return summary
