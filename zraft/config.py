"""Node configuration: one TOML file per node, read by each of its three processes.

Every setting has a default and a unit in its name (`_ms`, `_bytes`, `_ticks`), so that a file
needs only what differs. `config/zraft.example.toml` documents every key. Validation happens
here, once, so that a process never starts half-configured: a bad file is a clear error and a
non-zero exit, which supervisord or systemd report.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any


IPC_PATH_MAX = 107
"""sun_path holds 108 bytes including the terminating NUL."""


class ConfigError(Exception):
    """The configuration file is missing, malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class Peer:
    """How to reach one cluster member: its Raft inbox, its HTTP API and its native API."""

    id: int
    raft: str
    http: str
    api_zmq: str


@dataclass(frozen=True, slots=True)
class RaftSettings:
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_inflight: int = 64
    max_msg_bytes: int = 1 << 20
    max_inflight_bytes: int = 4 << 20
    """Entry data in flight to one follower at once (RaftConfig.max_inflight_bytes): a heartbeat
    never queues behind more than this at a follower."""
    max_pending_proposals: int = 10_000
    fetch_max_bytes: int = 4 << 20
    segment_bytes: int = 64 << 20
    snapshot_threshold: int = 8192
    """Compact the log once it holds this many entries beyond `trailing_logs` (rqlite's -raft-snap);
    the store makes its database durable every quarter of it."""
    trailing_logs: int = 10240
    """Entries kept below the compaction point, so that a briefly lagging follower still catches
    up from the log rather than a snapshot (rqlite keeps 1.25 x the threshold)."""
    snapshot_interval_ms: int = 10_000
    """Also compact this often when anything lies below the trailing margin (rqlite's -raft-snap-int)."""
    snapshot_threshold_bytes: int = 64 << 20
    """Also compact once the log's entries hold this many bytes; the trailing margin then keeps
    at most half of that. The raft process holds the log's entries in memory, so this bounds
    its memory when entries are large (a bulk load's chunks, big statements)."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    apply_batch_entries: int = 512
    results_kept: int = 100_000
    max_wait_ms: int = 60_000
    read_workers: int = 4
    max_queued_reads: int = 1000
    read_timeout_ms: int = 60_000
    max_result_bytes: int = 32 << 20
    max_write_steps: int = 500_000_000
    """SQLite VM steps one log entry may run (stamped into the entry by its proposer; equal to
    zraft.store.command.DEFAULT_BUDGET)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_result_bytes, int) and self.max_result_bytes > MAX_RESULT_BYTES:
            raise ConfigError(f"store.max_result_bytes = {self.max_result_bytes}: at most {MAX_RESULT_BYTES} "
                              "(a reply must stay under the wire's 64 MiB cap)")
        if isinstance(self.max_write_steps, int) and not 1 <= self.max_write_steps <= MAX_WRITE_STEPS:
            raise ConfigError(f"store.max_write_steps = {self.max_write_steps}: from 1 to {MAX_WRITE_STEPS}")


MAX_WRITE_STEPS = 50_000_000_000
"""The largest store.max_write_steps: what an entry may carry (zraft.store.command.MAX_BUDGET)."""
MAX_RESULT_BYTES = 60 << 20
"""The largest store.max_result_bytes: a reply's header is refused above 64 MiB
(zraft.wire.codec.MAX_HEADER_BYTES), and the envelope needs some room."""


@dataclass(frozen=True, slots=True)
class ApiSettings:
    max_body_bytes: int = 16 << 20
    request_timeout_ms: int = 10_000
    max_statements: int = 100_000
    max_in_flight: int = 10_000
    max_duration_ms: int = 3_600_000
    max_connections: int = 10_000
    header_timeout_ms: int = 10_000
    idle_timeout_ms: int = 75_000
    max_queued_statements: int = 100_000
    max_concurrent_backups: int = 2
    """/db/backup requests served at once; each holds a copy of the database on disk and a
    worker thread (zraft.api.backup_stream)."""
    max_load_bytes: int = 64 << 30
    """The largest SQLite file /db/load and /boot take (spooled to disk, never held in memory:
    zraft.api.loads). SQL text loads stay bounded by max_body_bytes."""

    def __post_init__(self) -> None:
        if isinstance(self.max_concurrent_backups, int) and self.max_concurrent_backups > MAX_CONCURRENT_BACKUPS:
            raise ConfigError(f"api.max_concurrent_backups = {self.max_concurrent_backups}: at most "
                              f"{MAX_CONCURRENT_BACKUPS} (each backup takes a thread and a copy of the database)")


MAX_CONCURRENT_BACKUPS = 16
"""The largest api.max_concurrent_backups: more copies at once would only compete for one disk."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node's processes need. `peers` lists every voter at bootstrap,
    this node included."""

    id: int
    data_dir: Path
    peers: tuple[Peer, ...]
    raft_rpc: str = ""
    raft_pub: str = ""
    store_rpc: str = ""
    store_pub: str = ""
    bootstrap: bool = True
    raft: RaftSettings = field(default_factory=RaftSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    api: ApiSettings = field(default_factory=ApiSettings)

    def me(self) -> Peer:
        for peer in self.peers:
            if peer.id == self.id:
                return peer
        raise ConfigError(f"node {self.id} is not in its own peers list")

    def peer(self, node_id: int) -> Peer | None:
        return next((p for p in self.peers if p.id == node_id), None)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "db.sqlite"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "raft"


def load(path: str | Path) -> NodeConfig:
    """Read and validate a node's TOML file."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return from_dict(raw, base=Path(path).parent)


def from_dict(raw: dict[str, Any], base: Path = Path(".")) -> NodeConfig:
    raw = dict(raw)
    node = _section(raw, "node")
    peers = raw.pop("peers", None)
    if not isinstance(peers, list) or not peers:
        raise ConfigError("[[peers]] must list every cluster member")
    data_dir = Path(str(node.pop("data_dir", "data")))
    config = NodeConfig(
        id=_require_int(node.pop("id", None), "node.id"),
        data_dir=data_dir if data_dir.is_absolute() else base / data_dir,
        peers=tuple(_peer(p) for p in peers),
        raft_rpc=str(node.pop("raft_rpc", "")),
        raft_pub=str(node.pop("raft_pub", "")),
        store_rpc=str(node.pop("store_rpc", "")),
        store_pub=str(node.pop("store_pub", "")),
        bootstrap=bool(node.pop("bootstrap", True)),
        raft=_settings(RaftSettings, _section(raw, "raft")),
        store=_settings(StoreSettings, _section(raw, "store")),
        api=_settings(ApiSettings, _section(raw, "api")),
    )
    _reject_unknown("node", node)
    _reject_unknown("top level", raw)
    return _with_local_defaults(config)


def _with_local_defaults(config: NodeConfig) -> NodeConfig:
    """Local links default to ipc sockets in the data folder."""
    run = config.data_dir.resolve()
    config.me()  # validates membership
    config = replace(
        config,
        raft_rpc=config.raft_rpc or f"ipc://{run}/raft.sock",
        raft_pub=config.raft_pub or f"ipc://{run}/raft-pub.sock",
        store_rpc=config.store_rpc or f"ipc://{run}/store.sock",
        store_pub=config.store_pub or f"ipc://{run}/store-pub.sock",
    )
    for name in ("raft_rpc", "raft_pub", "store_rpc", "store_pub"):
        address = getattr(config, name)
        if address.startswith("ipc://") and len(address.removeprefix("ipc://").encode()) > IPC_PATH_MAX:
            raise ConfigError(f"node.{name} = {address!r}: a Unix socket path may be at most {IPC_PATH_MAX} "
                              "bytes; set node.*_rpc / node.*_pub to a shorter ipc:// path")
    return config


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.pop(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return dict(value)


def _require_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _peer(raw: Any) -> Peer:
    if not isinstance(raw, dict):
        raise ConfigError("each [[peers]] entry must be a table")
    try:
        return Peer(id=_require_int(raw["id"], "peers.id"), raft=str(raw["raft"]),
                    http=str(raw["http"]), api_zmq=str(raw["api_zmq"]))
    except KeyError as exc:
        raise ConfigError(f"[[peers]] entry lacks {exc}") from None


def _settings(cls: type[Any], raw: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown keys in [{cls.__name__}]: {sorted(unknown)}")
    for key, value in raw.items():
        _require_int(value, key)
    return cls(**raw)


def _reject_unknown(where: str, raw: dict[str, Any]) -> None:
    if raw:
        raise ConfigError(f"unknown keys at {where}: {sorted(raw)}")


SECTIONS = ("raft", "store", "api")


def with_overrides(config: NodeConfig, assignments: Sequence[str]) -> NodeConfig:
    """`config` with each "KEY=VALUE" applied: KEY is `section.name` or a bare `name` that only
    one section has (`snapshot_threshold=500`). Used by `zraft cluster up --set`; an unknown
    key, an ambiguous one or a value the setting refuses is a ConfigError naming it."""
    changes: dict[str, dict[str, int]] = {section: {} for section in SECTIONS}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
        section, name = _setting_of(key.strip())
        try:
            value = int(text.strip().replace("_", ""), 0)
        except ValueError:
            raise ConfigError(f"--set {assignment!r}: {text.strip()!r} is not an integer") from None
        changes[section][name] = _require_int(value, f"{section}.{name}")
    return replace(config, **{section: replace(getattr(config, section), **values)
                              for section, values in changes.items() if values})


def _setting_of(key: str) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"--set {key}: no section [{section}] (sections: {', '.join(SECTIONS)})")
        if name not in {f.name for f in fields(_SECTION_TYPES[section])}:
            raise ConfigError(f"--set {key}: [{section}] has no setting {name!r}")
        return section, name
    owners = [s for s in SECTIONS if key in {f.name for f in fields(_SECTION_TYPES[s])}]
    if not owners:
        raise ConfigError(f"--set {key}: no such setting (see config/zraft.example.toml)")
    if len(owners) > 1:
        raise ConfigError(f"--set {key}: ambiguous, say {' or '.join(f'{o}.{key}' for o in owners)}")
    return owners[0], key


_SECTION_TYPES: dict[str, type[Any]] = {"raft": RaftSettings, "store": StoreSettings, "api": ApiSettings}


def render(config: NodeConfig) -> str:
    """A node config as TOML (used by `zraft cluster up` to write each node's file)."""
    lines = ["[node]", f"id = {config.id}", f'data_dir = "{config.data_dir}"',
             f"bootstrap = {'true' if config.bootstrap else 'false'}"]
    for name in ("raft_rpc", "raft_pub", "store_rpc", "store_pub"):
        lines.append(f'{name} = "{getattr(config, name)}"')
    for section in ("raft", "store", "api"):
        lines.append(f"\n[{section}]")
        settings = getattr(config, section)
        lines.extend(f"{f.name} = {getattr(settings, f.name)}" for f in fields(settings))
    for peer in config.peers:
        lines += ["\n[[peers]]", f"id = {peer.id}", f'raft = "{peer.raft}"',
                  f'http = "{peer.http}"', f'api_zmq = "{peer.api_zmq}"']
    return "\n".join(lines) + "\n"
