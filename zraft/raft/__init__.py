"""The pure Raft core: see core.py for the rules it keeps and types.py for its vocabulary."""

from zraft.raft.core import RaftCore, apply_conf_change
from zraft.raft.log import LogInvariantError, RaftLog
from zraft.raft.types import (
    NONE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Message,
    MsgType,
    ProposalDropped,
    RaftConfig,
    RandomSource,
    Ready,
    ReadState,
    Role,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "NONE", "ConfChange", "ConfChangeKind", "ConfState", "Entry", "EntryKind", "HardState",
    "InitialState", "LogInvariantError", "Message", "MsgType", "ProposalDropped", "RaftConfig",
    "RaftCore", "RaftLog", "RandomSource", "ReadState", "Ready", "Role", "SnapshotMeta",
    "SoftState", "apply_conf_change",
]
