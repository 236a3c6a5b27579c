"""Plain data types of the Raft core: messages, entries, hard state, configuration, Ready.

Rules of this module:
- stdlib only, no behaviour beyond tiny helpers; the wire codec (zraft.wire) encodes these
  types, the core produces and consumes them, and nothing else defines a Raft message;
- every type is a slotted dataclass; values are treated as immutable once built, which is
  what lets the core hand the same object to several outputs without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

NONE = 0
"""Node id meaning "nobody": no vote, no known leader. Real node ids are positive."""


class MsgType(IntEnum):
    """Every kind of message between Raft peers. Values are on the wire: never reuse one."""

    APP = 1
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAP = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESP = 12
    STATE_QUERY = 13
    STATE_REPLY = 14


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class EntryKind(IntEnum):
    """NORMAL entries carry application data (empty data is the leader's no-op); CONF entries
    carry a whole encoded ConfState, so the configuration at any log position is the latest
    CONF entry at or before it."""

    NORMAL = 0
    CONF = 1


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


CAMPAIGN_TRANSFER = 1
"""Vote-request context meaning "leadership transfer": the voter skips its leader lease."""


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        return len(self.data) + 24


@dataclass(slots=True, frozen=True)
class ConfState:
    """A cluster configuration: voters count toward quorums, learners only receive the log."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    def members(self) -> tuple[int, ...]:
        return self.voters + self.learners

    def encode(self) -> bytes:
        voters = ",".join(str(v) for v in self.voters)
        learners = ",".join(str(v) for v in self.learners)
        return f"v={voters};l={learners}".encode()

    @staticmethod
    def decode(data: bytes) -> ConfState:
        voter_part, learner_part = data.decode().split(";")
        return ConfState(
            voters=_parse_ids(voter_part.removeprefix("v=")),
            learners=_parse_ids(learner_part.removeprefix("l=")),
        )


def _parse_ids(text: str) -> tuple[int, ...]:
    return tuple(sorted(int(part) for part in text.split(",") if part))


class ConfChangeKind(IntEnum):
    ADD_LEARNER = 1
    ADD_VOTER = 2
    REMOVE = 3


@dataclass(slots=True, frozen=True)
class ConfChange:
    """One server at a time (Raft dissertation §4.1): add a learner, make a node a voter
    (adding it directly or promoting a learner), or remove a node."""

    kind: ConfChangeKind
    node_id: int


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    """Where a snapshot ends in the log, and the configuration in force at that point.
    The snapshot's data never passes through the core: the shell stores and ships it."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(slots=True, frozen=True)
class HardState:
    """What must be durable before any message that depends on it leaves the node.

    floor_term/floor_index: the *vote floor*, a log id (term, index) that stands in for log
    entries this node may have acknowledged and then lost (its log was cut short after damage
    to synced data, see raft/DESIGN.md). While the node's own last log id is below it, the node
    votes as if its log still ended there and does not campaign. (0, 0), the default, is no
    floor: every log id is at least that."""

    term: int = 0
    vote: int = NONE
    commit: int = 0
    floor_term: int = 0
    floor_index: int = 0

    def vote_floor(self) -> tuple[int, int]:
        """The floor as a comparable (term, index) log id."""
        return (self.floor_term, self.floor_index)


@dataclass(slots=True)
class Message:
    """One Raft peer message; unused fields keep their zero value.

    index/log_term: for APP, the entry preceding `entries`; for votes, the candidate's last
    entry; for APP_RESP, the last index accepted (or rejected). reject_hint/log_term on a
    rejected APP_RESP point the leader at the follower's likely conflict (fast back-off).
    context: read-index round on heartbeats, request id on READ_INDEX, CAMPAIGN_TRANSFER on votes.
    A HEARTBEAT_RESP with reject=True comes from a node below its vote floor: its log ends at
    reject_hint and may lack entries it acknowledged before, so the leader must forget what it
    believed this node matched (see RaftCore._handle_heartbeat_resp).
    """

    type: MsgType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: int = 0
    snapshot: SnapshotMeta | None = None


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once the local state machine has applied `index`."""

    index: int
    request_id: int


@dataclass(slots=True, frozen=True)
class SoftState:
    leader: int
    role: Role


@dataclass(slots=True)
class Ready:
    """Everything the shell must do for one cycle, in this order:

    1. send `messages` (leader replication: safe before the local write, §10.2.1);
    2. persist `snapshot`, `entries` (overwriting from entries[0].index) and `hard_state`,
       with an fsync if `must_sync`;
    3. send `messages_after_persist`;
    4. install `snapshot` into the state machine, then apply `committed_entries`;
    5. call `advance(ready)`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: SnapshotMeta | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False


@dataclass(slots=True, frozen=True)
class InitialState:
    """What a node recovered from its durable storage at start-up.

    A brand-new cluster member passes `snapshot=SnapshotMeta(conf=ConfState(voters=...))`
    with index 0 to bootstrap; a node that will join later passes an empty ConfState.
    `applied` is the state machine's durable applied index (0 if it replays from the snapshot).
    """

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    entries: tuple[Entry, ...] = ()
    applied: int = 0


@dataclass(slots=True, frozen=True)
class RaftConfig:
    """Tuning of one node's core. Times are in ticks: the shell decides how long a tick is.

    election_tick: a follower that hears no leader for this many ticks (plus a random jitter
        of up to as many again) starts an election; recommended 10 x heartbeat_tick.
    heartbeat_tick: a leader sends heartbeats every this many ticks.
    max_inflight: AppendEntries messages in flight to one follower in replicate state.
    max_msg_bytes: soft cap on the entries carried by one AppendEntries (at least one entry
        is always sent).
    max_inflight_bytes: entry data in flight to one follower in replicate state (0: no bound;
        one message always goes). Bounds how far a heartbeat can queue behind entries.
    recover_blank: a node that starts with no durable state at all (a new node, or one whose
        data was wiped) neither votes nor campaigns until enough other voters have told it
        their term and last log id (raft/DESIGN.md, "A node that lost everything").
    """

    node_id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_inflight: int = 64
    max_msg_bytes: int = 1 << 20
    max_inflight_bytes: int = 0
    recover_blank: bool = False
    pre_vote: bool = True
    check_quorum: bool = True


class RandomSource(Protocol):
    """The only source of randomness the core uses (election jitter); seeded by the caller."""

    def randrange(self, stop: int, /) -> int: ...


class ProposalDropped(Exception):
    """The proposal was not appended: not the leader, a transfer is under way, or another
    membership change is still uncommitted. Retrying is the caller's decision."""
