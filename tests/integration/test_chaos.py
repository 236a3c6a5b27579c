"""`zraft chaos` end to end, short: faults really cut, runs pass, and the checker bites.

These are the smoke versions; the CI job also runs `zraft chaos --runs 3 --time 60`, and the
README gives the long campaign. They need root (iptables) and skip without it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest

from tests.integration.helpers import free_port_base
from zraft.chaos.nemesis import ALL_FAULTS, Firewall
from zraft.chaos.runner import ChaosOptions, run_campaign

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("iptables") is None,
                       reason="needs root and iptables (apt-get install iptables)"),
]


def _connects(source: str, destination: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        sock.bind((source, 0))
        try:
            sock.connect((destination, port))
        except OSError:
            return False
        return True


def test_firewall_cuts_one_pair_of_node_addresses_and_proves_it():
    with socket.socket() as server:
        server.bind(("127.0.0.33", 0))
        server.listen(16)
        port = server.getsockname()[1]
        firewall = Firewall(f"ZRAFT-T-{os.getpid() % 10**6}")
        try:
            assert _connects("127.0.0.32", "127.0.0.33", port)
            firewall.drop("127.0.0.32", "127.0.0.33")
            assert not _connects("127.0.0.32", "127.0.0.33", port)
            assert _connects("127.0.0.34", "127.0.0.33", port), "other pairs must still connect"
            assert _connects("127.0.0.1", "127.0.0.33", port), "clients on 127.0.0.1 are never cut"
            assert firewall.dropped_packets() > 0
            firewall.heal()
            assert firewall.dropped_packets() == 0
            assert _connects("127.0.0.32", "127.0.0.33", port)
        finally:
            firewall.close()
    listed = subprocess.run(["iptables", "-w", "-L", firewall.chain], capture_output=True)
    assert listed.returncode != 0, "close() must remove the chain"


def _options(tmp_path, first_host: int, **overrides) -> ChaosOptions:
    base = dict(runs=1, time_s=24.0, interval_s=3.0, seed=5, out=tmp_path / "chaos",
                http_port=free_port_base(), first_host=first_host, concurrency=6, rate=200.0)
    base.update(overrides)
    return ChaosOptions(**base)


def _assert_passed(campaign, options):
    lines = [json.dumps(r.to_json()) for r in campaign.runs]
    assert campaign.passed, lines
    run = campaign.runs[0]
    assert run.injections and all(i.fired for i in run.injections), lines
    assert run.baseline_rate >= options.min_rate
    assert run.ops > 200
    assert (run.directory / "history.jsonl").stat().st_size > 0
    assert json.loads((run.directory / "summary.json").read_text())["valid"] is True
    assert campaign.last_line() == f"1 runs, {run.ops} ops, 0 violations, 0 lost, 0 invalid"


def test_register_run_with_every_fault_passes(tmp_path):
    options = _options(tmp_path, 40, faults=ALL_FAULTS)
    _assert_passed(run_campaign(options, echo=lambda _: None), options)


def test_set_run_with_kills_and_pauses_loses_nothing(tmp_path):
    options = _options(tmp_path, 44, workload="set", faults=("kill", "kill-node", "pause"), seed=8)
    campaign = run_campaign(options, echo=lambda _: None)
    _assert_passed(campaign, options)
    finals = [json.loads(line) for line in (campaign.runs[0].directory / "history.jsonl").open()
              if '"final-' in line and '"ok"' in line]
    assert len(finals) == 3, "every node's final read must be recorded"


def test_set_run_with_power_loss_and_full_disks_loses_nothing(tmp_path):
    """Data folders on lazyfs over a small tmpfs: power cuts drop every unsynced byte, and a
    balloon fills a node's disk; every acknowledged element must still be on every node."""
    from zraft.chaos.lazyfs import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    options = _options(tmp_path, 56, workload="set", faults=("power-loss", "disk-full", "slow-disk"),
                       seed=12)
    _assert_passed(run_campaign(options, echo=lambda _: None), options)
    assert not any(line.split()[1].startswith(str(tmp_path)) for line in open("/proc/self/mounts")), \
        "every mount must be gone after the run"


def test_bit_flips_in_synced_log_data_are_caught_and_the_node_recovers_from_its_peers(tmp_path):
    options = _options(tmp_path, 60, faults=("bitflip",), seed=14)
    campaign = run_campaign(options, echo=lambda _: None)
    _assert_passed(campaign, options)
    run = campaign.runs[0]
    for injection in run.injections:
        assert "salvaged the damaged raft log" in injection.evidence, injection.evidence
        assert "checksum mismatch in synced data" in injection.evidence, injection.evidence
    assert list(run.directory.glob("cluster/node*/data/raft.corrupt-*")), "damaged logs are kept aside"


def test_bank_run_under_partitions_keeps_the_total(tmp_path):
    options = _options(tmp_path, 48, workload="bank", faults=("partition", "loss"), seed=9)
    _assert_passed(run_campaign(options, echo=lambda _: None), options)


def test_reads_at_none_under_partitions_are_reported_non_linearizable(tmp_path):
    """The checker must bite on a real cluster: a partitioned node serves stale local reads."""
    options = _options(tmp_path, 52, faults=("partition-leader",), read_levels=("none",), interval_s=4.0)
    campaign = run_campaign(options, echo=lambda _: None)
    run = campaign.runs[0]
    assert run.valid, run.invalid
    assert run.violations > 0, run.report
    assert "invalid: no linearization" in run.report
    assert not campaign.passed
