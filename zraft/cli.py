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
