"""A local cluster in one command: node configs, a supervisord config, start, status, stop.

Layout of a cluster folder:
    DIR/supervisord.conf, DIR/supervisord.pid, DIR/supervisord.log, DIR/supervisor.sock
    DIR/node<i>/zraft.toml   the node's config (data lives beside it)
    DIR/node<i>/{raft,store,api}.log

Node i serves HTTP on P + 2(i-1) (rqlite's 4001/4003/4005 for P=4001), its Raft inbox on the
port above that, and its native ZeroMQ API on P + 100 + 2(i-1).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zraft.config import NodeConfig, Peer, RaftSettings, load, render, with_overrides

PROCESSES = ("raft", "store", "api")
DEFAULT_DIR = Path("zraft-cluster")


class ClusterError(Exception):
    """The local cluster could not be started, inspected or stopped as asked."""


@dataclass(frozen=True)
class NodeStatus:
    id: int
    http: str
    leader: bool
    pids: dict[str, int | None]

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "http": self.http, "leader": self.leader, "pids": self.pids}


def node_hosts(nodes: int, hosts: Sequence[str] | None) -> list[str]:
    """Each node's listen address: all on 127.0.0.1 unless `hosts` names one per node."""
    if hosts is None:
        return ["127.0.0.1"] * nodes
    if len(hosts) != nodes:
        raise ClusterError(f"{nodes} nodes need {nodes} host addresses, got {len(hosts)}")
    return list(hosts)


def node_peers(nodes: int, http_port: int, hosts: Sequence[str] | None = None) -> tuple[Peer, ...]:
    peers = []
    for i, host in enumerate(node_hosts(nodes, hosts), start=1):
        http = http_port + 2 * (i - 1)
        peers.append(Peer(id=i, raft=f"tcp://{host}:{http + 1}", http=f"{host}:{http}",
                          api_zmq=f"tcp://{host}:{http + 100}"))
    return tuple(peers)


def cluster_ports(nodes: int, http_port: int,
                  hosts: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """Every (host, TCP port) a local cluster binds: HTTP, Raft and native API of each node."""
    ports = []
    for i, host in enumerate(node_hosts(nodes, hosts)):
        http = http_port + 2 * i
        ports += [(host, http), (host, http + 1), (host, http + 100)]
    return ports


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        # Like the servers themselves, ignore connections lingering in TIME-WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def write_configs(directory: Path, nodes: int, http_port: int,
                  raft: RaftSettings | None = None, hosts: Sequence[str] | None = None,
                  data_subdir: str = "", overrides: Sequence[str] = ()) -> list[Path]:
    """One zraft.toml per node in DIR/node<i>; the data lives there too, or in a subfolder
    `data_subdir` of it (the chaos suite mounts failing filesystems there)."""
    peers = node_peers(nodes, http_port, hosts)
    paths = []
    for peer in peers:
        node_dir = (directory / f"node{peer.id}").resolve()
        data_dir = node_dir / data_subdir if data_subdir else node_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        sockets = socket_dir(data_dir)
        config = NodeConfig(id=peer.id, data_dir=data_dir, peers=peers, raft=raft or RaftSettings(),
                            raft_rpc=f"ipc://{sockets}/raft.sock",
                            raft_pub=f"ipc://{sockets}/raft-pub.sock",
                            store_rpc=f"ipc://{sockets}/store.sock",
                            store_pub=f"ipc://{sockets}/store-pub.sock")
        config = with_overrides(config, overrides)
        path = node_dir / "zraft.toml"
        path.write_text(render(config))
        paths.append(path)
    return paths


def fake_clock_environment(node_dir: Path) -> dict[str, str]:
    """Run a node's processes under libfaketime, steered by `node_dir/faketime.rc`.

    The file holds a libfaketime spec ("+0", "-120", "+0 x2") that each process re-reads at
    most once a second; the chaos suite's clock fault rewrites it. Only the wall clock is
    faked: changing the spec of a running process makes libfaketime's monotonic clock jump
    backwards, which no real kernel does, and zraft's timers rely on monotonic time."""
    libraries = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    if not libraries:
        raise ClusterError("libfaketime is not installed (apt-get install faketime)")
    spec = node_dir / "faketime.rc"
    if not spec.exists():
        spec.write_text("+0\n")
    return {"LD_PRELOAD": str(libraries[0]), "FAKETIME_TIMESTAMP_FILE": str(spec),
            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


SOCKET_PATH_MAX = 100
"""Unix-domain socket paths must fit in 108 bytes (sun_path); keep a margin."""


def socket_dir(data_dir: Path) -> Path:
    """Where a node's ipc sockets go: its data folder, unless the paths would be too long
    for a Unix socket, then a short folder in /tmp named after the data folder."""
    if len(f"{data_dir}/store-pub.sock") <= SOCKET_PATH_MAX:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"zraft-{digest}"


def supervisord_conf(directory: Path, config_paths: list[Path], fake_clock: bool = False) -> str:
    """supervisord runs every process in the foreground and restarts it when it exits
    unexpectedly (a kill -9 or a non-zero exit); exit code 0 means a clean stop."""
    d = directory.resolve()
    lines = [
        "[unix_http_server]", f"file={d}/supervisor.sock", "",
        "[supervisord]", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid",
        "logfile_maxbytes=10MB", "logfile_backups=2", "loglevel=info", f"directory={d}", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{d}/supervisor.sock", "",
    ]
    for node_id, path in enumerate(config_paths, start=1):
        node_dir = path.parent
        environment = fake_clock_environment(node_dir) if fake_clock else {}
        for priority, proc in enumerate(PROCESSES, start=1):
            lines += [
                f"[program:node{node_id}-{proc}]",
                f"command={sys.executable} -m zraft run {proc} --config {path}",
                *(["environment=" + ",".join(f'{k}="{v}"' for k, v in environment.items())]
                  if environment else []),
                f"priority={priority * 10}",
                "autostart=true", "autorestart=unexpected", "exitcodes=0",
                "startsecs=0", "startretries=1000", "stopsignal=TERM", "stopwaitsecs=10",
                "stopasgroup=true", "killasgroup=true", "redirect_stderr=true",
                f"stdout_logfile={node_dir}/{proc}.log", "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=1", "",
            ]
    return "\n".join(lines)


def up(directory: Path, nodes: int, http_port: int, timeout_s: float = 30.0,
       raft: RaftSettings | None = None, hosts: Sequence[str] | None = None,
       fake_clock: bool = False, data_subdir: str = "", overrides: Sequence[str] = ()) -> list[NodeStatus]:
    """Write configs, start supervisord with nodes x 3 programs, and wait for a leader.

    `hosts` gives each node its own listen address (the chaos suite uses 127.0.0.2, .3, ...
    so that firewall rules can cut one node off from another). `overrides` are "KEY=VALUE"
    settings applied to every node's file (config.with_overrides)."""
    directory.mkdir(parents=True, exist_ok=True)
    if _supervisord_pid(directory) is not None:
        raise ClusterError(f"a cluster is already running in {directory}; run `zraft cluster down` first")
    busy = sorted(f"{host}:{port}" for host, port in cluster_ports(nodes, http_port, hosts)
                  if not port_free(port, host))
    if busy:
        raise ClusterError(f"ports already in use: {', '.join(busy)}; "
                           "choose another --http-port or stop whatever holds them")
    config_paths = write_configs(directory, nodes, http_port, raft, hosts, data_subdir, overrides)
    conf = directory / "supervisord.conf"
    conf.write_text(supervisord_conf(directory, config_paths, fake_clock))
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf.resolve())],
                   check=True, cwd=directory)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = status(directory)
        if any(s.leader for s in statuses) and all(_ready(s.http) for s in statuses):
            return statuses
        time.sleep(0.2)
    raise ClusterError(f"the cluster was not ready (a leader known to every node) within "
                       f"{timeout_s:.0f} s; see the logs in {directory}\n{_readiness_report(directory)}")


def status(directory: Path) -> list[NodeStatus]:
    """Each node's HTTP address, whether it is the leader, and its processes' PIDs."""
    pids = program_pids(directory)
    result = []
    for path in sorted(directory.glob("node*/zraft.toml"), key=lambda p: int(p.parent.name[4:])):
        config = load(path)
        result.append(NodeStatus(config.id, config.me().http, is_leader(config),
                                 {proc: pids.get(f"node{config.id}-{proc}") for proc in PROCESSES}))
    return result


def change(directory: Path, method: str, path: str, body: dict[str, str] | None, timeout_s: float = 30.0) -> str:
    """Send one membership request (DELETE /remove, POST /leader?wait) to the cluster through
    the first node that answers; the node that took it. Raises ClusterError with the
    server's answer when it failed, or when no node could be reached."""
    from zraft.shell import Client, ShellError

    problems = []
    for node in status(directory):
        client = Client(f"http://{node.http}", timeout=timeout_s)
        try:
            response = client.request(method, path, body=body)
        except ShellError as exc:
            problems.append(str(exc))
            continue
        if response.status != 200:
            raise ClusterError(f"node {node.id}: {response.failure()}")
        return client.host
    raise ClusterError("no node answered: " + "; ".join(problems))


def down(directory: Path, timeout_s: float = 30.0) -> None:
    """Stop every process of the cluster, then supervisord, and make sure none is left behind.

    The processes get SIGTERM all at once (a clean stop exits 0, which supervisord does not
    restart): supervisord would stop them one at a time, each noticed on its next one-second
    check, which made every `down` take 5-8 s."""
    pids = [pid for pid in program_pids(directory).values() if pid]
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    supervisor_pid = _supervisord_pid(directory)
    if supervisor_pid is not None:
        _signal(supervisor_pid, signal.SIGTERM)  # it stops anything it restarted meanwhile, then exits
        pids.append(supervisor_pid)
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    (directory / "supervisord.pid").unlink(missing_ok=True)


# == helpers ===================================================================================
def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _supervisord_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / "supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def process_state(pid: int) -> str:
    """The process's state letter from /proc (R, S, T for stopped, Z for zombie...), or
    "gone" when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return "gone"


def _alive(pid: int) -> bool:
    """Running or stopped; a zombie is dead for our purposes."""
    return process_state(pid) not in ("gone", "Z")


_STATUS_LINE = re.compile(r"^(\S+)\s+RUNNING\s+pid (\d+)")


def program_pids(directory: Path) -> dict[str, int]:
    """supervisord's program name ("node2-raft") -> PID of each running program."""
    conf = directory / "supervisord.conf"
    if _supervisord_pid(directory) is None or not conf.exists():
        return {}
    out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf.resolve()),
                          "status"], capture_output=True, text=True, timeout=30).stdout
    pids = {}
    for line in out.splitlines():
        match = _STATUS_LINE.match(line)
        if match:
            pids[match.group(1)] = int(match.group(2))
    return pids


def _readiness_report(directory: Path) -> str:
    """One line per node: is it ready, is it leader, and the last role its raft log reported,
    so that a start-up failure on a machine we cannot log into explains itself."""
    lines = []
    for node in status(directory):
        log = directory / f"node{node.id}" / "raft.log"
        roles = [line.strip() for line in _tail(log) if " role " in line or "stopping" in line]
        lines.append(f"node {node.id} ({node.http}): ready {_ready(node.http)}, leader {node.leader}, "
                     f"raft log: {roles[-1] if roles else 'no role line'}")
    return "\n".join(lines)


def _tail(path: Path, limit: int = 65536) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _ready(http: str) -> bool:
    """rqlite's /readyz: 200 once the node knows a leader and its store is up."""
    try:
        with urllib.request.urlopen(f"http://{http}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def is_leader(config: NodeConfig) -> bool:
    """Ask the node's raft process itself, so the answer does not depend on the API process."""
    import zmq

    from zraft.wire import decode, encode
    from zraft.wire.messages import RaftStatus, StatusRequest

    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(config.raft_rpc)
        sock.send_multipart(encode(StatusRequest(id=1)))
        if not sock.poll(1000):
            return False
        reply = decode(sock.recv_multipart())
    except Exception:  # noqa: BLE001 - any failure means "not known to be leader"
        return False
    finally:
        sock.close()
    return isinstance(reply, RaftStatus) and reply.role == "leader"
