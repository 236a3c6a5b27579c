"""Recovery from a lost quorum with a `peers.json` file, as rqlite's (issue 12).

When a majority of the voters is gone for good, no election can succeed and no membership
change can commit. The operator stops the survivors, writes the same file into each one's
raft folder (`<data_dir>/raft/peers.json`) and starts them:

    [{"id": "1", "address": "10.0.0.1:4002"}, {"id": "4", "address": "...", "non_voter": true}]

At start the raft process reads the file before anything else and appends to its own log one
configuration entry with those members, at the end of the log and in the node's current term
(so its log stays as up-to-date as before); then it renames the file `peers.info`, so that it
is consumed once (a crash between the two only appends the same configuration again). Raft
uses the newest configuration in a node's log, committed or not, so the survivors now count
votes among themselves: one is elected, commits its log, this entry included, and every
entry it holds, committed before or not, is applied (as rqlite's recovery applies the whole
log). Several survivors' entries differ only in where they sit; the new leader's log wins and
the others' tails are replaced, as for any uncommitted entries.

This is the one operation that overrides Raft's safety, by the operator's decision: entries
acknowledged by the lost majority alone are lost. The file is refused (the process does not
start, and the file stays) if it is not a list of members with ids, names no voter, names a
node twice, or leaves this node out (it could never be elected). The `address` of each member
is not used yet: addresses come from each node's configuration file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from zraft.config import ConfigError
from zraft.logstore import LogStore
from zraft.logstore.fsutil import fsync_dir
from zraft.raft import ConfState, Entry, EntryKind

log = logging.getLogger("zraft.raft_proc")

PEERS_FILE = "peers.json"
CONSUMED_FILE = "peers.info"
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a recovery did: the configuration it appended, and at which index."""

    conf: ConfState
    index: int


def read_peers(path: Path, my_id: int) -> ConfState:
    """The configuration a peers file asks for; ConfigError says what is wrong with it."""
    try:
        raw = path.read_bytes()[:MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, list) or not doc:
        raise ConfigError(f'{path}: must be a non-empty list of members, e.g. [{{"id": "1", "address": "..."}}]')
    voters: list[int] = []
    learners: list[int] = []
    for position, member in enumerate(doc):
        node_id, non_voter = _member(member, f"{path}: member {position + 1}")
        if node_id in voters or node_id in learners:
            raise ConfigError(f"{path}: node {node_id} is listed twice")
        (learners if non_voter else voters).append(node_id)
    if not voters:
        raise ConfigError(f"{path}: names no voter")
    if my_id not in voters:
        raise ConfigError(f"{path}: this node ({my_id}) is not a voter in it, so it could never be elected")
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


def _member(member: object, where: str) -> tuple[int, bool]:
    if not isinstance(member, dict):
        raise ConfigError(f"{where}: must be an object")
    unknown = set(member) - {"id", "address", "non_voter"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    value = member.get("id")
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or not 0 < int(text) < 1 << 62:
        raise ConfigError(f"{where}: id must be a positive integer (as a string or a number), got {value!r}")
    non_voter = member.get("non_voter", False)
    if not isinstance(non_voter, bool):
        raise ConfigError(f"{where}: non_voter must be true or false")
    if not isinstance(member.get("address", ""), str):
        raise ConfigError(f"{where}: address must be a string")
    return int(text), non_voter


def recover_if_asked(store: LogStore, log_dir: Path, my_id: int) -> Recovered | None:
    """Apply `log_dir/peers.json` if it is there (see the module docstring); None if not."""
    path = log_dir / PEERS_FILE
    if not path.exists():
        return None
    conf = read_peers(path, my_id)
    initial = store.load()
    last = initial.entries[-1] if initial.entries else None
    last_index = last.index if last is not None else initial.snapshot.index
    if initial.hard_state.term == 0 and last_index == 0:
        raise ConfigError(f"{path}: this node holds no data: there is nothing to recover (start it empty "
                          f"and let it join instead)")
    entry = Entry(initial.hard_state.term, last_index + 1, EntryKind.CONF, conf.encode())
    store.save(None, [entry], sync=True)
    os.replace(path, log_dir / CONSUMED_FILE)
    fsync_dir(log_dir)
    log.critical("recovered membership from %s: voters %s, non-voters %s, appended at index %d (term %d); "
                 "the file is now %s", path, list(conf.voters), list(conf.learners), entry.index, entry.term,
                 CONSUMED_FILE)
    return Recovered(conf, entry.index)
