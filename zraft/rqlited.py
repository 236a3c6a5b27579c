"""`zraft-rqlited`: rqlited's command line, for one zraft node (issue 12).

    zraft-rqlited [-node-id ID] [-http-addr HOST:PORT] [-raft-addr HOST:PORT] [FLAGS...] DATA_DIR

Tools and test rigs that start `rqlited` (pyrqlite's spawn mode with RQLITED_PATH, scripts,
containers) work unchanged when pointed at this command. It writes the node's zraft.toml and
a supervisord.conf into DATA_DIR, then becomes supervisord (`exec`, in the foreground), which
runs and restarts the node's three processes; SIGTERM stops them (a leader hands leadership
over first) and then it exits, as rqlited does.

Flags take Go's forms (`-flag value`, `-flag=value`, and `-flag` alone for booleans; two
dashes work too). Each flag rqlited has either maps to a zraft setting or is refused with a
message naming it, never silently ignored:

| rqlited flag | zraft |
|---|---|
| `-node-id` (default: the advertised Raft address) | the node id: digits are used as they are; any other string is mapped to a stable number (a 62-bit BLAKE2 hash), so string ids work |
| `-http-addr`, `-raft-addr` | the node's HTTP and Raft peer addresses (a host name is resolved once, here) |
| `-http-adv-addr`, `-raft-adv-addr` | accepted when equal to the bind address: zraft binds and advertises one address |
| `-raft-snap`, `-raft-snap-int` | `raft.snapshot_threshold`, `raft.snapshot_interval_ms` |
| `-raft-election-timeout` | `raft.election_ticks` (in ticks of `raft.tick_ms`) |
| `-raft-apply-timeout` | `api.request_timeout_ms` |
| `-join`, `-bootstrap-expect`, `-raft-non-voter` | accepted when they ask for a single-node cluster (empty, 0 or 1, false); joining is not built yet |
| `-version` | prints the version |

The native ZeroMQ endpoint, which rqlited does not have, listens on an ipc socket in DATA_DIR.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zraft import __version__
from zraft.api.params import parse_duration
from zraft.cluster import socket_dir, supervisord_conf
from zraft.config import ConfigError, NodeConfig, Peer, RaftSettings, render, with_overrides

BOOL_FLAGS = frozenset({"version", "raft-non-voter"})
USAGE = "usage: zraft-rqlited [flags] DATA_DIR (zraft-rqlited -help lists the flags)"


class UsageError(Exception):
    """A command line that cannot start a node; the message names the flag."""


@dataclass
class Flags:
    data_dir: Path
    node_id: str = ""
    http_addr: str = "localhost:4001"
    raft_addr: str = "localhost:4002"
    overrides: list[str] = field(default_factory=list)


def _duration_ms(flag: str, text: str) -> int:
    try:
        return max(1, round(parse_duration(text) * 1000))
    except ValueError as exc:
        raise UsageError(f"-{flag}: {exc}") from None


def _count(flag: str, text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"-{flag}: expected a non-negative integer, got {text!r}")
    return int(text)


def _setting(key: str, convert: Callable[[str, str], int]) -> Callable[[Flags, str, str], None]:
    def apply(flags: Flags, flag: str, value: str) -> None:
        flags.overrides.append(f"{key}={convert(flag, value)}")
    return apply


def _election(flags: Flags, flag: str, value: str) -> None:
    ticks = max(2, math.ceil(_duration_ms(flag, value) / RaftSettings().tick_ms))  # tick_ms stays at its default
    flags.overrides.append(f"raft.election_ticks={ticks}")


def _single_node_only(accepted: Callable[[str], bool], why: str) -> Callable[[Flags, str, str], None]:
    def check(flags: Flags, flag: str, value: str) -> None:
        if not accepted(value):
            raise UsageError(f"-{flag} {value}: {why}")
    return check


def _same_as(attribute: str) -> Callable[[Flags, str, str], None]:
    def check(flags: Flags, flag: str, value: str) -> None:
        if value and value != getattr(flags, attribute):
            raise UsageError(f"-{flag} {value}: zraft binds and advertises one address; give it as "
                             f"-{attribute.replace('_', '-')} instead")
    return check


JOIN_NOT_YET = "joining a running cluster is not supported by zraft yet; start a single node"
HANDLERS: dict[str, Callable[[Flags, str, str], None]] = {
    "node-id": lambda flags, _, value: setattr(flags, "node_id", value),
    "http-addr": lambda flags, _, value: setattr(flags, "http_addr", value),
    "raft-addr": lambda flags, _, value: setattr(flags, "raft_addr", value),
    "http-adv-addr": _same_as("http_addr"),
    "raft-adv-addr": _same_as("raft_addr"),
    "raft-snap": _setting("raft.snapshot_threshold", _count),
    "raft-snap-int": _setting("raft.snapshot_interval_ms", _duration_ms),
    "raft-election-timeout": _election,
    "raft-apply-timeout": _setting("api.request_timeout_ms", _duration_ms),
    "join": _single_node_only(lambda v: v == "", JOIN_NOT_YET),
    "bootstrap-expect": _single_node_only(lambda v: v in ("0", "1"), JOIN_NOT_YET),
    "raft-non-voter": _single_node_only(lambda v: v.lower() in ("false", "0"),
                                        "read-only nodes must join a cluster, which zraft cannot do yet"),
}


def parse(argv: list[str]) -> Flags:
    """rqlited's flags and its DATA_DIR; UsageError names what is wrong."""
    values: list[tuple[str, str]] = []
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            raise UsageError(__doc__ or USAGE)
        if name in BOOL_FLAGS:
            if name != "version":
                values.append((name, value if has_value else "true"))
            continue
        if name not in HANDLERS:
            raise UsageError(f"flag -{name} is not supported by zraft-rqlited (see zraft-rqlited -help)")
        if not has_value:
            following = next(args, None)
            if following is None:
                raise UsageError(f"flag -{name} needs a value")
            value = following
        values.append((name, value))
    if len(positional) != 1:
        raise UsageError(f"exactly one DATA_DIR must be given, got {len(positional)}; {USAGE}")
    flags = Flags(Path(positional[0]))
    for name, value in sorted(values, key=lambda item: item[0] not in ("http-addr", "raft-addr")):
        HANDLERS[name](flags, name, value)
    return flags


def node_id_of(text: str) -> int:
    """rqlite's ids are strings; zraft's are positive integers below 2**62."""
    if text.isdigit() and 0 < int(text) < 1 << 62:
        return int(text)
    return (int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 2) or 1


def _bind_address(flag: str, address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"-{flag} {address!r}: expected HOST:PORT")
    try:
        return f"{socket.gethostbyname(host or '0.0.0.0')}:{port}"
    except OSError as exc:
        raise UsageError(f"-{flag} {address!r}: cannot resolve {host!r}: {exc}") from None


def node_config(flags: Flags) -> NodeConfig:
    data_dir = flags.data_dir.resolve()
    http = _bind_address("http-addr", flags.http_addr)
    raft = _bind_address("raft-addr", flags.raft_addr)
    node_id = node_id_of(flags.node_id or raft)
    sockets = socket_dir(data_dir)
    me = Peer(id=node_id, raft=f"tcp://{raft}", http=http, api_zmq=f"ipc://{sockets}/api.sock")
    config = NodeConfig(id=node_id, data_dir=data_dir, peers=(me,), raft_rpc=f"ipc://{sockets}/raft.sock",
                        raft_pub=f"ipc://{sockets}/raft-pub.sock", store_rpc=f"ipc://{sockets}/store.sock",
                        store_pub=f"ipc://{sockets}/store-pub.sock")
    return with_overrides(config, flags.overrides)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(arg.lstrip("-") in ("version", "version=true") for arg in args):
        print(f"zraft-rqlited {__version__} (zraft, speaking rqlite's HTTP API)")
        return 0
    try:
        flags = parse(args)
        config = node_config(flags)
    except (UsageError, ConfigError) as exc:
        print(f"zraft-rqlited: {exc}", file=sys.stderr)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    socket_dir(config.data_dir).mkdir(parents=True, exist_ok=True)
    config_path = config.data_dir / "zraft.toml"
    config_path.write_text(render(config))
    supervisor = config.data_dir / "supervisord.conf"
    supervisor.write_text(supervisord_conf(config.data_dir, [config_path]))
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(supervisor)])
    return 1  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
