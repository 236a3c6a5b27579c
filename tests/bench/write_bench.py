"""Write benchmark: wrk against a zraft cluster (or any rqlite-compatible endpoint).

    python -m tests.bench.write_bench                     # starts a local 3-node cluster
    python -m tests.bench.write_bench --url http://127.0.0.1:4001 --label rqlite

For each connection count it runs wrk `--runs` times for `--seconds` each, every request one
single-row INSERT to /db/execute on the leader, and prints the median and the spread (min-max)
of requests/s and of wrk's p50/p99 latency, so that the machine's noise is visible. Errors
(non-2xx or bodies carrying "error") are counted by the Lua script and reported; a run with
errors is flagged, never silently averaged in.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local errors = 0
request = function()
  counter = counter + 1
  local body = string.format('[["INSERT INTO bench(v) VALUES(?)", "value-%d-%d"]]', counter, math.random(1, 1000000000))
  return wrk.format(nil, "/db/execute", nil, body)
end
response = function(status, headers, body)
  if status ~= 200 or string.find(body, '"error"') then errors = errors + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("ZRAFT_ERRORS %d\n", summary.errors.status + errors))
end
"""


def parse_wrk(output: str) -> dict[str, float]:
    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"ZRAFT_ERRORS (\d+)", output)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50_ms": latency_ms("50%"),
            "p99_ms": latency_ms("99%"), "errors": float(errors.group(1)) if errors else -1}


def run_wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    threads = min(connections, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(out.stdout)


def summarize(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def find_leader(urls: list[str]) -> str:
    for url in urls:
        try:
            with urllib.request.urlopen(f"{url}/status", timeout=2) as response:
                body = json.load(response)
        except OSError:
            continue
        if body.get("store", {}).get("raft", {}).get("state") == "Leader":
            return url
    return urls[0]


def prepare(url: str) -> None:
    request = urllib.request.Request(f"{url}/db/execute", method="POST",
                                     data=b'["CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, v TEXT)"]',
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", help="HTTP base URL(s); default: start a local cluster")
    parser.add_argument("--label", default="zraft")
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--http-port", type=int, default=14001)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="zraft-bench-"))
    cluster_dir = workdir / "cluster"
    urls = args.url
    if not urls:
        subprocess.run([sys.executable, "-m", "zraft", "cluster", "up", "--dir", str(cluster_dir),
                        "--http-port", str(args.http_port)], check=True)
        urls = [f"http://127.0.0.1:{args.http_port + 2 * i}" for i in range(3)]
    try:
        leader = find_leader(urls)
        prepare(leader)
        script = workdir / "insert.lua"
        script.write_text(LUA)
        print(f"# {args.label}: single-row INSERT per request to {leader}, {args.runs} runs x {args.seconds} s")
        print("connections | req/s median (min-max) | p50 ms | p99 ms | errors")
        for connections in (int(c) for c in args.connections.split(",")):
            runs = [run_wrk(leader, connections, args.seconds, script) for _ in range(args.runs)]
            errors = sum(r["errors"] for r in runs)
            print(f"{connections:>11} | {summarize([r['rps'] for r in runs]):>24} | "
                  f"{summarize([r['p50_ms'] for r in runs])} | {summarize([r['p99_ms'] for r in runs])} | "
                  f"{errors:.0f}{'  <-- ERRORS' if errors else ''}")
    finally:
        if not args.url:
            subprocess.run([sys.executable, "-m", "zraft", "cluster", "down", "--dir", str(cluster_dir)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
