"""Every message that crosses a process or node boundary, in one place.

Rules of this module:
- each message is a slotted dataclass with a unique `KIND`; the registry refuses duplicates at
  import time, and a kind name or field meaning is never reused once shipped;
- fields are JSON-friendly (int, str, bool, None, list, dict) except `bytes` fields, which the
  codec carries in frames of their own, and `entries`, whose data also travel as frames;
- new fields get defaults, so that older senders stay decodable (PROTOCOL_VERSION bumps only
  for incompatible changes);
- request/reply messages carry `id`, chosen by the requester and echoed in the reply;
- Raft peer traffic is zraft.raft.types.Message itself (kind "raft"): the transport moves the
  core's own type, with no translation layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

Json = Any

REGISTRY: dict[str, type[WireMessage]] = {}


class WireMessage:
    """Base of every non-Raft message; subclasses register themselves by KIND."""

    KIND: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        known = REGISTRY.get(cls.KIND)
        # dataclass(slots=True) rebuilds the class, so the same class may register twice.
        if cls.KIND == "raft" or (known is not None and known.__qualname__ != cls.__qualname__):
            raise TypeError(f"duplicate wire kind {cls.KIND!r}")
        REGISTRY[cls.KIND] = cls


# == client -> raft process (DEALER -> ROUTER) ===============================================
@dataclass(slots=True)
class Propose(WireMessage):
    """Append `data` (an encoded store command) to the log. Only a leader accepts."""

    KIND: ClassVar[str] = "propose"
    id: int
    data: bytes


@dataclass(slots=True)
class Proposed(WireMessage):
    """The proposal is in the leader's log at (index, term); commit is not yet known."""

    KIND: ClassVar[str] = "proposed"
    id: int
    index: int
    term: int


@dataclass(slots=True)
class ProposeBatch(WireMessage):
    """Several Proposes at once (the api coalesces those of one event-loop turn): each of
    `payloads` travels as a frame of its own and is appended as one entry, in order."""

    KIND: ClassVar[str] = "propose_batch"
    id: int
    payloads: list[bytes]


@dataclass(slots=True)
class ProposedBatch(WireMessage):
    """The answer to a ProposeBatch, one row per payload in order: [index, term] once
    appended, or [error_code, message, leader] as a single Propose's Error would carry."""

    KIND: ClassVar[str] = "proposed_batch"
    id: int
    results: list[Json]


@dataclass(slots=True)
class ReadIndex(WireMessage):
    """Ask for a linearizable read point (Raft read-index)."""

    KIND: ClassVar[str] = "read_index"
    id: int


@dataclass(slots=True)
class ReadIndexReply(WireMessage):
    KIND: ClassVar[str] = "read_index_reply"
    id: int
    index: int


@dataclass(slots=True)
class StatusRequest(WireMessage):
    KIND: ClassVar[str] = "status"
    id: int


@dataclass(slots=True)
class StatusReply(WireMessage):
    KIND: ClassVar[str] = "status_reply"
    id: int
    status: dict[str, Json]


@dataclass(slots=True)
class FetchEntries(WireMessage):
    """Pull committed entries from `start` on, up to about `max_bytes` of data."""

    KIND: ClassVar[str] = "fetch"
    id: int
    start: int
    max_bytes: int = 1 << 20
    wait_ms: int = 0
    """Long poll: when nothing from `start` on is committed yet, the raft process may hold the
    request up to this long (bounded on its side) and answer as soon as the commit advances.
    0 (the default, and what an older raft process does) answers at once."""
    linger_ms: int = 0
    """With wait_ms: hold the request this long even once entries are committed, to take
    more of them at once (for a store that nobody is waiting on). A newer fetch from the same
    requester replaces a held one, which is then never answered."""
    disk_full: str = ""
    """Non-empty while the store cannot apply entries for lack of disk space (the reason):
    the raft process then refuses writes and hands leadership to a node that has space. An
    older raft process ignores the field."""


@dataclass(slots=True)
class EntriesReply(WireMessage):
    """Committed entries in index order; `commit` is the raft process's commit index.
    `entries` are zraft.raft.types.Entry values; their data travel as extra frames."""

    KIND: ClassVar[str] = "entries"
    id: int
    commit: int
    entries: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class ConfChangeRequest(WireMessage):
    """Membership change: op is "add_learner", "add_voter" or "remove"."""

    KIND: ClassVar[str] = "conf_change"
    id: int
    op: str
    node_id: int


@dataclass(slots=True)
class TransferLeader(WireMessage):
    KIND: ClassVar[str] = "transfer_leader"
    id: int
    node_id: int


@dataclass(slots=True)
class Ok(WireMessage):
    """A generic success reply."""

    KIND: ClassVar[str] = "ok"
    id: int
    result: Json = None


@dataclass(slots=True)
class Error(WireMessage):
    """A failed request. `code` is one of zraft.errors' codes (e.g. "not_leader",
    "timeout", "leadership_lost", "bad_request", "unavailable"); `leader` names the
    leader's node id when known, so that the caller can forward."""

    KIND: ClassVar[str] = "error"
    id: int
    code: str
    message: str
    leader: int = 0


# == api -> store process (DEALER -> ROUTER) =================================================
@dataclass(slots=True)
class WaitApplied(WireMessage):
    """Reply once entry `index` is applied: with its result if its term is `term`, or a
    leadership_lost error if another entry took that index."""

    KIND: ClassVar[str] = "wait_applied"
    id: int
    index: int
    term: int
    timeout_ms: int = 10_000
    options: dict[str, Json] = field(default_factory=dict)


@dataclass(slots=True)
class AppliedResult(WireMessage):
    KIND: ClassVar[str] = "applied_result"
    id: int
    index: int
    result: Json


@dataclass(slots=True)
class WaitAppliedBatch(WireMessage):
    """Several WaitApplied at once: `requests` rows are [id, index, term, timeout_ms, options],
    each answered on its own (AppliedResult or Error carrying that row's id)."""

    KIND: ClassVar[str] = "wait_applied_batch"
    id: int
    requests: list[Json]


@dataclass(slots=True)
class AppliedResultBatch(WireMessage):
    """Answers to several WaitAppliedBatch rows at once (only to a requester that sent a
    WaitAppliedBatch): each of `rows` is [id, index, result] for an AppliedResult or
    [id, code, message, leader] for an Error."""

    KIND: ClassVar[str] = "applied_result_batch"
    id: int
    rows: list[Json]


@dataclass(slots=True)
class Query(WireMessage):
    """Run read-only statements once the store has applied at least `min_applied`.
    `statements` are [sql, params] pairs; `options` holds rqlite's rendering flags
    (associative, blob_array, timings)."""

    KIND: ClassVar[str] = "query"
    id: int
    statements: list[Json]
    min_applied: int = 0
    timeout_ms: int = 10_000
    options: dict[str, Json] = field(default_factory=dict)


@dataclass(slots=True)
class QueryResult(WireMessage):
    KIND: ClassVar[str] = "query_result"
    id: int
    results: list[Json]
    applied: int = 0


# == native client -> api process (DEALER -> ROUTER) =========================================
@dataclass(slots=True)
class ClientExecute(WireMessage):
    """rqlite's /db/execute: statements are [sql, params] pairs."""

    KIND: ClassVar[str] = "client_execute"
    id: int
    statements: list[Json]
    transaction: bool = False
    timeout_ms: int = 10_000
    # As in ClientQuery: rqlite's rendering flags; "forwarded": true marks a follower's hop.
    options: dict[str, Json] = field(default_factory=dict)


@dataclass(slots=True)
class ClientQuery(WireMessage):
    """rqlite's /db/query with a consistency level: none, weak, linearizable or strong."""

    KIND: ClassVar[str] = "client_query"
    id: int
    statements: list[Json]
    level: str = "weak"
    timeout_ms: int = 10_000
    options: dict[str, Json] = field(default_factory=dict)


@dataclass(slots=True)
class ClientResults(WireMessage):
    KIND: ClassVar[str] = "client_results"
    id: int
    results: list[Json]
    raft_index: int = 0


# == notices (PUB -> SUB), the Clone pattern ================================================
@dataclass(slots=True)
class CommitNotice(WireMessage):
    """Published by raft on every commit advance and as a heartbeat. `seq` numbers every
    notice from one publisher incarnation (`epoch`), so a subscriber sees gaps; the notices are
    only hints: the subscriber always fetches what it needs by request."""

    KIND: ClassVar[str] = "commit_notice"
    epoch: int
    seq: int
    commit: int
    term: int
    leader: int


@dataclass(slots=True)
class AppliedNotice(WireMessage):
    """Published by the store after each applied batch and as a heartbeat."""

    KIND: ClassVar[str] = "applied_notice"
    epoch: int
    seq: int
    applied: int
