"""Every message that crosses a process or node boundary, in one place.

Rules of this module:
- each message is a slotted dataclass with a unique `KIND`; the registry refuses duplicates at
  import time, and a kind name or field meaning is never reused once shipped;
- every field has a precise type, and the codec (zraft.wire.codec) validates each one on
  decode: a message that decodes is well-formed, so no receiver re-checks shapes by hand.
  The only free-form JSON (`JsonValue`) is what belongs to clients: SQL results
  (`AppliedResult.result`, `AppliedRow.result`, `QueryResult.results`,
  `ClientResults.results`) and the operator's /status document (`StatusReply.status`);
- nested values are `Row`s (a JSON array of their fields, in order: compact, for batches)
  or `Record`s (a JSON object, fields at their default left out: for options, where fields
  come and go); `bytes` fields and entry data travel as frames of their own;
- new fields get defaults, so that older senders stay decodable; receivers ignore fields they
  do not know, so that newer senders do too (PROTOCOL_VERSION bumps only for incompatible
  changes);
- request/reply messages carry `id`, chosen by the requester and echoed in the reply; a
  failed request is answered with `Error`, whose `code` is an `ErrorCode`;
- Raft peer traffic is zraft.raft.types.Message itself (kind "raft"): the transport moves the
  core's own type, with no translation layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from zraft.raft.types import Entry
from zraft.wire.sql import Statement

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

JsonValue: TypeAlias = "None | bool | int | float | str | Sequence[JsonValue] | Mapping[str, JsonValue]"
"""Free-form JSON: only for what belongs to clients (SQL results, the /status document).
Read-only container types, so that a `list[dict[str, Any]]` of results is one."""
JsonObject: TypeAlias = "dict[str, JsonValue]"

REGISTRY: dict[str, type[WireMessage]] = {}


class ErrorCode(StrEnum):
    """Why a request failed; zraft.api.errors maps each code to one exception class."""

    INTERNAL = "internal"
    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    NOT_LEADER = "not_leader"
    UNAVAILABLE = "unavailable"
    BUSY = "busy"
    TIMEOUT = "timeout"
    LEADERSHIP_LOST = "leadership_lost"
    DISK_FULL = "disk_full"
    NOT_APPLIED = "not_applied"
    REJECTED = "rejected"
    """The raft core refused a membership change (another is pending, no-op not committed)."""
    COMPACTED = "compacted"
    """The entries asked for are no longer in the log."""
    RESULT_UNAVAILABLE = "result_unavailable"
    """The entry was applied, but its result is no longer kept."""

    @classmethod
    def _missing_(cls, value: object) -> ErrorCode:
        """A code from a newer build reads as INTERNAL: the message still says what failed."""
        return cls.INTERNAL


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


class Row:
    """A value nested in a message, carried as a JSON array of its fields in order; trailing
    fields with defaults may be left out."""


class Record:
    """A value nested in a message, carried as a JSON object; fields equal to their default
    are left out, and unknown keys are ignored."""


# == nested values ============================================================================
@dataclass(slots=True)
class Appended(Row):
    """One row of ProposedBatch: the payload is in the leader's log at (index, term)."""

    index: int
    term: int


@dataclass(slots=True)
class Refused(Row):
    """One row of ProposedBatch: the payload was not appended, as an `Error` would say."""

    code: ErrorCode
    message: str
    leader: int = 0


@dataclass(frozen=True, slots=True)
class RenderOptions(Record):
    """rqlite's result-shaping flags."""

    associative: bool = False
    blob_array: bool = False


@dataclass(frozen=True, slots=True)
class QueryOptions(Record):
    """How the store runs and renders a read."""

    associative: bool = False
    blob_array: bool = False
    qualify_columns: bool = False
    db_timeout_ms: int = 0
    """rqlite's db_timeout: interrupt a statement after this long (0: no limit)."""

    @property
    def render(self) -> RenderOptions:
        return RenderOptions(self.associative, self.blob_array)


@dataclass(frozen=True, slots=True)
class ClientOptions(Record):
    """rqlite's request flags that travel with a client request to the node that serves it."""

    associative: bool = False
    blob_array: bool = False
    qualify_columns: bool = False
    db_timeout_ms: int = 0
    transaction: bool = False
    norwrandom: bool = False
    norwtime: bool = False
    noparse: bool = False
    forwarded: bool = False
    """Sent by a follower to the leader: never forward it again."""

    @property
    def render(self) -> RenderOptions:
        return RenderOptions(self.associative, self.blob_array)

    @property
    def query(self) -> QueryOptions:
        return QueryOptions(self.associative, self.blob_array, self.qualify_columns, self.db_timeout_ms)


@dataclass(slots=True)
class BatchedWait(Row):
    """One row of WaitAppliedBatch: a WaitApplied of its own."""

    id: int
    index: int
    term: int
    timeout_ms: int
    options: RenderOptions = RenderOptions()


@dataclass(slots=True)
class AppliedRow(Row):
    """One row of AppliedResultBatch: the AppliedResult of request `id`."""

    id: int
    index: int
    result: JsonValue


@dataclass(slots=True)
class FailedRow(Row):
    """One row of AppliedResultBatch: the Error answering request `id`."""

    id: int
    code: ErrorCode
    message: str
    leader: int = 0


@dataclass(frozen=True, slots=True)
class PeerProgress(Record):
    """A leader's view of one follower's replication."""

    match: int = 0
    next: int = 0
    state: str = ""


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
    """The answer to a ProposeBatch, one row per payload in order."""

    KIND: ClassVar[str] = "proposed_batch"
    id: int
    results: list[Appended | Refused]


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
    """Answered by the raft process with RaftStatus, by the store with StoreStatus and by the
    api's native endpoint with StatusReply."""

    KIND: ClassVar[str] = "status"
    id: int


@dataclass(slots=True)
class StatusReply(WireMessage):
    """The api's answer: the node's /status document, as rqlite shapes it for operators."""

    KIND: ClassVar[str] = "status_reply"
    id: int
    status: JsonObject


@dataclass(slots=True)
class RaftStatus(WireMessage):
    """The raft process about itself."""

    KIND: ClassVar[str] = "raft_status"
    id: int
    node_id: int
    role: str
    """"leader", "follower", "candidate" or "pre_candidate"."""
    term: int
    vote: int
    leader: int
    commit: int
    """The last entry the store may apply here: committed and durable on this node."""
    raft_commit: int
    """The core's commit index, which may run ahead of what this node has on disk."""
    first_index: int
    last_index: int
    voters: list[int]
    learners: list[int]
    epoch: int
    """Which incarnation of the process publishes the commit notices."""
    seq: int
    """The last commit notice published."""
    pending_reads: int
    disk_full: str
    """Why this node takes no writes ("disk full: ..."); empty when its disks are fine."""
    vote_floor: list[int]
    """[term, index] of the vote floor; [0, 0] when none (raft/DESIGN.md)."""
    stats: dict[str, int] = field(default_factory=dict)
    progress: dict[str, PeerProgress] = field(default_factory=dict)
    """On a leader: each follower's replication, by node id."""
    snapshot_index: int = 0
    """Where the log starts: entries up to here are compacted (0: nothing is)."""
    snapshot_term: int = 0
    log_bytes: int = 0
    """The log's files on disk (segments include preallocated space)."""
    removed_by: int = 0
    """The leader that told this node it was removed from the cluster (0: none did); the
    node does not campaign meanwhile."""


@dataclass(slots=True)
class StoreStatus(WireMessage):
    """The store process about itself."""

    KIND: ClassVar[str] = "store_status"
    id: int
    applied: int
    """The node's one applied index: the last entry whose effects are in the database."""
    known_commit: int
    """The highest commit index of the raft process that the store has heard."""
    lag_ms: int | None
    """How long the applied data has trailed a commit it knew of (0: caught up; None:
    unknown, behind since before the store started); see zraft/procs/lag.py."""
    db_path: str
    parked: int
    disk_full: str
    """Why entries cannot be applied ("disk full: ..."); empty when fine."""
    stats: dict[str, int] = field(default_factory=dict)


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
    durable: int = 0
    """The applied index up to which the store's database is fsynced: the raft process
    compacts its log only below it. 0 (an older store): never compact."""


@dataclass(slots=True)
class SnapshotPull(WireMessage):
    """Peer link, follower to leader: send bytes [offset, offset + max_bytes) of the database
    image of transfer `session` (zraft.store.image). The follower keeps at most a window of
    pulls unanswered by its store (`raft.max_inflight_bytes`), so the pulls are the flow
    control, and a resume is a pull from where it stopped. `index` is the log index the image
    must reach (the SNAP message that asked for it). The chunk that answers carries this id."""

    KIND: ClassVar[str] = "snap_pull"
    id: int
    frm: int
    to: int
    session: int
    index: int
    offset: int
    max_bytes: int


@dataclass(slots=True)
class SnapshotChunk(WireMessage):
    """Peer link, leader to follower: bytes of an image from `offset`; `size` is the whole
    image's, `applied` the index it holds; `id` is the pull's it answers. Empty `data` with
    `size` 0: the leader cannot serve this session (it restarted, or the image was dropped):
    pull again from 0."""

    KIND: ClassVar[str] = "snap_chunk"
    id: int
    frm: int
    to: int
    session: int
    offset: int
    size: int
    applied: int
    data: bytes


@dataclass(slots=True)
class MemberRemoved(WireMessage):
    """Peer link, leader to a node that asked it for a vote (or a pre-vote) although the
    leader's configuration does not hold it: that node was removed from the cluster (it
    missed the entry that removed it, which the leader no longer sends it). It stops
    campaigning until a leader sends it entries again (zraft.procs.removal)."""

    KIND: ClassVar[str] = "member_removed"
    frm: int
    to: int
    term: int


@dataclass(slots=True)
class ExportRead(WireMessage):
    """Raft process to its store: bytes of export `session` from `offset` (opened at 0)."""

    KIND: ClassVar[str] = "export_read"
    id: int
    session: int
    offset: int
    max_bytes: int


@dataclass(slots=True)
class ExportChunk(WireMessage):
    """The store's answer to ExportRead."""

    KIND: ClassVar[str] = "export_chunk"
    id: int
    session: int
    offset: int
    size: int
    applied: int
    data: bytes


@dataclass(slots=True)
class ImageWrite(WireMessage):
    """Raft process to its store: bytes of an incoming image at `offset` of transfer
    `session` (a new session starts at 0); once `size` bytes are in, the store verifies and
    installs the image before it answers."""

    KIND: ClassVar[str] = "image_write"
    id: int
    session: int
    offset: int
    size: int
    data: bytes


@dataclass(slots=True)
class ImageWritten(WireMessage):
    """The store's answer to ImageWrite: bytes received so far, and the applied index once
    the image is installed (0 before)."""

    KIND: ClassVar[str] = "image_written"
    id: int
    session: int
    received: int
    installed: int


@dataclass(slots=True)
class EntriesReply(WireMessage):
    """Committed entries in index order; `commit` is the raft process's commit index (as
    RaftStatus.commit). Entry data travel as frames of their own."""

    KIND: ClassVar[str] = "entries"
    id: int
    commit: int
    entries: list[Entry] = field(default_factory=list)


@dataclass(slots=True)
class ConfChangeRequest(WireMessage):
    """Membership change: op is "add_learner", "add_voter" or "remove". Answered with
    Proposed (the change's entry) or Error."""

    KIND: ClassVar[str] = "conf_change"
    id: int
    op: str
    node_id: int


@dataclass(slots=True)
class TransferLeader(WireMessage):
    """Hand leadership to `node_id`, or with 0 to the most up-to-date voter. Answered with
    Ok (its `result` names the target) or Error."""

    KIND: ClassVar[str] = "transfer_leader"
    id: int
    node_id: int


@dataclass(slots=True)
class SyncDatabase(WireMessage):
    """Api to its store: fsync what is applied now; answered with Synced."""

    KIND: ClassVar[str] = "sync_db"
    id: int


@dataclass(slots=True)
class Synced(WireMessage):
    """The applied index that is now on stable storage."""

    KIND: ClassVar[str] = "synced"
    id: int
    durable: int


@dataclass(slots=True)
class CompactLog(WireMessage):
    """Api to its raft process (rqlite's POST /snapshot): compact the log as far as the
    store's `durable` index allows, keeping `trailing` entries (-1: the configured margin).
    Answered with Compacted."""

    KIND: ClassVar[str] = "compact_log"
    id: int
    durable: int
    trailing: int = -1


@dataclass(slots=True)
class Compacted(WireMessage):
    """Where the log starts now (`index` + 1); `changed` is false when nothing could go."""

    KIND: ClassVar[str] = "compacted"
    id: int
    index: int
    changed: bool


@dataclass(slots=True)
class Ok(WireMessage):
    """A success; `result` is an optional note for humans."""

    KIND: ClassVar[str] = "ok"
    id: int
    result: str | None = None


@dataclass(slots=True)
class Error(WireMessage):
    """A failed request. `leader` names the leader's node id when known, so that the caller
    can forward."""

    KIND: ClassVar[str] = "error"
    id: int
    code: ErrorCode
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
    options: RenderOptions = RenderOptions()


@dataclass(slots=True)
class AppliedResult(WireMessage):
    KIND: ClassVar[str] = "applied_result"
    id: int
    index: int
    result: JsonValue


@dataclass(slots=True)
class WaitAppliedBatch(WireMessage):
    """Several WaitApplied at once, each answered on its own (AppliedResult or Error carrying
    that row's id, or gathered into an AppliedResultBatch)."""

    KIND: ClassVar[str] = "wait_applied_batch"
    id: int
    requests: list[BatchedWait]


@dataclass(slots=True)
class AppliedResultBatch(WireMessage):
    """Answers to several WaitAppliedBatch rows at once (only to a requester that sent a
    WaitAppliedBatch)."""

    KIND: ClassVar[str] = "applied_result_batch"
    id: int
    rows: list[AppliedRow | FailedRow]


@dataclass(slots=True)
class Query(WireMessage):
    """Run read-only statements once the store has applied at least `min_applied`."""

    KIND: ClassVar[str] = "query"
    id: int
    statements: list[Statement]
    min_applied: int = 0
    timeout_ms: int = 10_000
    options: QueryOptions = QueryOptions()


@dataclass(slots=True)
class QueryResult(WireMessage):
    KIND: ClassVar[str] = "query_result"
    id: int
    results: list[JsonValue]
    applied: int = 0


# == native client -> api process (DEALER -> ROUTER) =========================================
@dataclass(slots=True)
class ClientExecute(WireMessage):
    """rqlite's /db/execute."""

    KIND: ClassVar[str] = "client_execute"
    id: int
    statements: list[Statement]
    transaction: bool = False
    timeout_ms: int = 10_000
    options: ClientOptions = ClientOptions()


@dataclass(slots=True)
class ClientQuery(WireMessage):
    """rqlite's /db/query with a consistency level: none, weak, linearizable or strong."""

    KIND: ClassVar[str] = "client_query"
    id: int
    statements: list[Statement]
    level: str = "weak"
    timeout_ms: int = 10_000
    options: ClientOptions = ClientOptions()


@dataclass(slots=True)
class ClientRemove(WireMessage):
    """rqlite's DELETE /remove: take `node_id` out of the cluster, voter or not. Answered
    with Ok once the change is committed and applied on the node that answers, or Error. A
    follower forwards it to the leader with `forwarded` set; a node that is not the leader
    then answers NOT_LEADER instead of forwarding it again."""

    KIND: ClassVar[str] = "client_remove"
    id: int
    node_id: int
    timeout_ms: int = 10_000
    forwarded: bool = False


@dataclass(slots=True)
class ClientTransfer(WireMessage):
    """rqlite's POST /leader: hand leadership to `node_id` (0: the most up-to-date voter).
    Answered with Ok once the transfer has started, or with `wait` once another node
    leads; `forwarded` as for ClientRemove."""

    KIND: ClassVar[str] = "client_transfer"
    id: int
    node_id: int = 0
    wait: bool = False
    timeout_ms: int = 10_000
    forwarded: bool = False


@dataclass(slots=True)
class ClientResults(WireMessage):
    KIND: ClassVar[str] = "client_results"
    id: int
    results: list[JsonValue]
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
