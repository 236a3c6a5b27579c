"""Fault names, groups and source pinning: the parts of the nemesis that need no root."""

from __future__ import annotations

import pytest

from zraft.chaos.nemesis import ALL_FAULTS, expand
from zraft.transport.sockets import from_own_address


def test_groups_expand_in_order_without_duplicates():
    assert expand(["partition"]) == ("partition-halves", "partition-leader", "partition-bridge",
                                     "partition-asym")
    assert expand(["kill", "all"])[0] == "kill"
    assert set(expand(["all"])) == set(ALL_FAULTS)
    assert len(expand(["kill", "kill"])) == 1


def test_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown fault 'netem'"):
        expand(["netem"])


@pytest.mark.parametrize("destination,own,expected", [
    ("tcp://127.0.0.3:4403", "tcp://127.0.0.2:4402", "tcp://127.0.0.2:0;127.0.0.3:4403"),
    ("tcp://10.0.0.7:4002", "tcp://10.0.0.5:4002", "tcp://10.0.0.5:0;10.0.0.7:4002"),
    # no specific own address: let the kernel choose
    ("tcp://127.0.0.3:4403", "tcp://0.0.0.0:4402", "tcp://127.0.0.3:4403"),
    ("tcp://127.0.0.3:4403", "tcp://node1.example:4402", "tcp://127.0.0.3:4403"),
    ("tcp://127.0.0.3:4403", "", "tcp://127.0.0.3:4403"),
    # not tcp, or already pinned: unchanged
    ("ipc:///run/zraft/raft.sock", "tcp://127.0.0.2:4402", "ipc:///run/zraft/raft.sock"),
    ("tcp://127.0.0.9:0;127.0.0.3:4403", "tcp://127.0.0.2:4402", "tcp://127.0.0.9:0;127.0.0.3:4403"),
])
def test_source_pinning(destination, own, expected):
    assert from_own_address(destination, own) == expected
