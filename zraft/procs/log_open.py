"""Opening a node's raft log at start, and salvaging it when it has damage in synced data
(zraft/logstore/salvage.py says when that is safe). Kept apart from raft_proc.py, which only
wires the running process."""

from __future__ import annotations

import logging

from zraft.config import NodeConfig
from zraft.logstore import FileLogStore, LogCorruptError, LogStore
from zraft.logstore.salvage import SalvageRefused, finish_interrupted, quarantine, salvage
from zraft.raft import RaftLog

log = logging.getLogger("zraft.raft_proc")


def open_log(config: NodeConfig) -> FileLogStore:
    """The node's log store, after finishing a salvage that a crash interrupted."""
    finish_interrupted(config.log_dir)
    return FileLogStore(config.log_dir, segment_size=config.raft.segment_bytes)


def salvage_or_raise(config: NodeConfig, damage: LogCorruptError) -> FileLogStore:
    """The log has damage in synced data: salvage it when that is safe (see salvage.py), and
    return a store on the new log; otherwise re-raise `damage` (the process then exits
    non-zero, as it always did)."""
    log.critical("the raft log has damage in synced data: %s", damage)
    try:
        salvaged = salvage(config.log_dir, damage)
        voters = RaftLog(salvaged.snapshot, salvaged.entries, 0, 0).latest_conf().voters
        if voters == (config.id,):
            raise SalvageRefused("this node is the cluster's only voter: no peer holds what was lost")
        aside = quarantine(config.log_dir, salvaged, segment_size=config.raft.segment_bytes)
    except (SalvageRefused, OSError) as exc:
        log.critical("cannot recover from the damage automatically (%s): refusing to start; an operator "
                     "must replace this node's data: move %s and the database aside and restart the node "
                     "with the same id; it comes back empty and catches up from the leader", exc, config.log_dir)
        raise damage from None
    log.critical("salvaged the damaged raft log: %s; the damaged log is kept at %s (never deleted "
                 "automatically); starting from the salvaged log, the rest comes from the leader",
                 salvaged.describe(), aside)
    return FileLogStore(config.log_dir, segment_size=config.raft.segment_bytes)


def close_quietly(store: LogStore) -> None:
    try:
        store.close()
    except Exception as exc:
        log.error("error while closing the log store: %s", exc)
