"""What a peer message must look like before the core acts on it.

The core trusts nothing it is handed: a message from the network may come from a buggy,
older, corrupted or hostile peer. `problem(msg, me)` names the first thing about `msg` that no
correct peer would ever send, or returns None. The core drops such a message, counts it
(`RaftCore.refused`) and never raises: one bad message must not crash a process, stall the
cluster, or make two logs differ (a raised LogInvariantError would end the raft process, and
a restart would meet the same message again).

These are shape rules, true of every message whatever the receiver's state. Rules that need
the receiver's state (an acknowledgement of entries beyond the leader's log, a read-index
answer from a node that is not the leader) are checked where the message is handled.
Authenticity (is this really node `frm`?) is the transport's concern, not this module's.
"""

from __future__ import annotations

from zraft.raft.types import NONE, ConfState, Entry, EntryKind, Message, MsgType

MAX_VALUE = 1 << 62
"""Bound on every term, index, commit and context: far beyond any real log, and low enough
that term + 1 and index + 1 stay within the 64-bit fields of the wire and the disk format."""

MAX_TERM_JUMP = 1 << 32
"""How far ahead of the receiver's term a message's term may be. Terms grow by one an
election; a term four billion elections ahead is no real peer's, and taking it would let a
few forged messages use up the term space (each costs the cluster an election, and a term
near MAX_VALUE leaves none). Checked in RaftCore.step, which knows its term."""

_NUMBERS = ("term", "log_term", "index", "commit", "reject_hint", "context")


def problem(msg: Message, me: int) -> str | None:
    """What is wrong with `msg` as a message to node `me`, or None when nothing is."""
    if msg.frm == NONE or msg.frm == me:
        return "a message from node 0 or from this node itself"
    if msg.to != me:
        return "a message addressed to another node"
    for name in _NUMBERS:
        value = getattr(msg, name)
        if not 0 <= value <= MAX_VALUE:
            return f"{name} {value} out of range"
    if msg.entries and msg.type != MsgType.APP:
        return f"entries on a {msg.type.name}"
    if msg.snapshot is not None and msg.type != MsgType.SNAP:
        return f"a snapshot on a {msg.type.name}"
    if msg.type in (MsgType.APP, MsgType.VOTE, MsgType.PRE_VOTE) and msg.log_term > msg.term:
        return f"log term {msg.log_term} above the message's term {msg.term}"
    if msg.type == MsgType.APP:
        return _entries_problem(msg)
    if msg.type == MsgType.SNAP:
        return _snapshot_problem(msg)
    return None


def _entries_problem(msg: Message) -> str | None:
    """An AppendEntries carries entries index+1, index+2, ... with terms that never decrease,
    start at or above the term of the entry they follow, and never exceed the leader's term."""
    previous_term = msg.log_term
    for position, entry in enumerate(msg.entries):
        if entry.index != msg.index + 1 + position:
            return f"entry {entry.index} where {msg.index + 1 + position} must follow"
        if entry.term < 1 or not previous_term <= entry.term <= msg.term:
            return f"entry {entry.index} of term {entry.term} out of order (after {previous_term}, leader {msg.term})"
        if entry.kind == EntryKind.CONF and _conf_problem(entry) is not None:
            return _conf_problem(entry)
        previous_term = entry.term
    if msg.index + len(msg.entries) > MAX_VALUE:
        return "entries beyond the index range"
    return None


def _conf_problem(entry: Entry) -> str | None:
    try:
        conf = ConfState.decode(entry.data)
    except (ValueError, UnicodeDecodeError):
        return f"configuration entry {entry.index} that does not decode"
    return _members_problem(conf, f"configuration entry {entry.index}")


def _snapshot_problem(msg: Message) -> str | None:
    snapshot = msg.snapshot
    if snapshot is None:
        return "a SNAP without a snapshot"
    if not 0 <= snapshot.index <= MAX_VALUE or not 0 <= snapshot.term <= msg.term:
        return f"snapshot at {snapshot.index}@{snapshot.term} out of range (leader term {msg.term})"
    if (snapshot.index == 0) != (snapshot.term == 0):
        return f"snapshot at {snapshot.index}@{snapshot.term}: index and term must both be 0 or both not"
    return _members_problem(snapshot.conf, "snapshot configuration")


def _members_problem(conf: ConfState, what: str) -> str | None:
    members = conf.voters + conf.learners
    if not conf.voters:
        return f"{what} without voters"
    if any(not 0 < node <= MAX_VALUE for node in members) or len(set(members)) != len(members):
        return f"{what} with invalid or repeated node ids"
    return None
