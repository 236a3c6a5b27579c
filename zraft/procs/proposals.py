"""Requests that change the log: proposals, membership changes and leadership transfers.

Each is checked in the same order: a failing disk refuses it (DiskHealth), a follower answers
not_leader with the leader it knows (the api forwards there), a command larger than a
follower's inbox takes in one frame is too_large, a leader with too many uncommitted entries
answers busy (the bound on what a leader holds in memory), and only then
does the core take it. A successful Proposed is held by the RPC server until this turn's
AppendEntries are out (replication first), so the answer costs no extra latency.

The core is passed in on every call: the raft shell rebuilds it after a failed log write.
"""

from __future__ import annotations

import logging

from zraft.procs.disk_health import DiskHealth
from zraft.procs.shell import Counters
from zraft.raft import NONE, ConfChange, ConfChangeKind, ProposalDropped, RaftCore, Role, apply_conf_change
from zraft.wire.messages import (
    Appended,
    ConfChangeRequest,
    Error,
    ErrorCode,
    Ok,
    Propose,
    ProposeBatch,
    Proposed,
    ProposedBatch,
    Refused,
    TransferLeader,
    WireMessage,
)

log = logging.getLogger("zraft.raft_proc")

MEMBERSHIP_OPS = {
    "add_learner": ConfChangeKind.ADD_LEARNER,
    "add_voter": ConfChangeKind.ADD_VOTER,
    "remove": ConfChangeKind.REMOVE,
}


class Proposals:
    """Turns log-changing requests into core calls; owned by the raft process's loop thread."""

    def __init__(self, node_id: int, known_nodes: frozenset[int], max_pending: int, max_entry_bytes: int,
                 disk: DiskHealth, stats: Counters) -> None:
        """`max_entry_bytes`: the largest entry the followers' inboxes take in one frame
        (zraft.transport.sockets.native_max_frame_bytes); a larger one would never reach them."""
        self._node_id = node_id
        self._known_nodes = known_nodes
        self._max_pending = max_pending
        self._max_entry_bytes = max_entry_bytes
        self._disk = disk
        self._stats = stats

    def propose(self, core: RaftCore, req: Propose) -> WireMessage:
        refusal = self._refusal(core, req.id)
        if refusal is not None:
            return refusal
        if len(req.data) > self._max_entry_bytes:  # followers would drop the link that carries it
            self._stats["proposals_too_large"] += 1
            return Error(req.id, ErrorCode.TOO_LARGE,
                         f"the command is {len(req.data)} bytes; at most {self._max_entry_bytes} fit in a log entry")
        if core.log.last_index() - core.log.committed >= self._max_pending:
            self._stats["proposals_busy"] += 1
            return Error(req.id, ErrorCode.BUSY, "too many uncommitted proposals", leader=core.leader)
        try:
            index = core.propose(req.data)
        except ProposalDropped as exc:  # a hand-off is under way: nothing appended, ask the next leader
            return Error(req.id, ErrorCode.NOT_LEADER, str(exc), leader=NONE)
        self._stats["proposals"] += 1
        return Proposed(req.id, index, core.term)

    def propose_batch(self, core: RaftCore, req: ProposeBatch) -> WireMessage:
        """Each payload exactly as a Propose of its own, all appended in this turn."""
        rows: list[Appended | Refused] = []
        for data in req.payloads:
            reply = self.propose(core, Propose(req.id, data))
            if isinstance(reply, Proposed):
                rows.append(Appended(reply.index, reply.term))
            else:
                assert isinstance(reply, Error)
                rows.append(Refused(reply.code, reply.message, reply.leader))
        return ProposedBatch(req.id, rows)

    def change_membership(self, core: RaftCore, req: ConfChangeRequest) -> WireMessage:
        kind = MEMBERSHIP_OPS.get(req.op)
        if kind is None:
            return Error(req.id, ErrorCode.BAD_REQUEST, f"unknown membership op {req.op!r}")
        if kind != ConfChangeKind.REMOVE and req.node_id not in self._known_nodes:
            return Error(req.id, ErrorCode.BAD_REQUEST, f"node {req.node_id} has no address in the configuration")
        refusal = self._refusal(core, req.id)
        if refusal is not None:
            return refusal
        change = ConfChange(kind, req.node_id)
        try:
            apply_conf_change(core.conf, change)
        except ProposalDropped as exc:  # meaningless here (already a voter, not a member, the last voter)
            return Error(req.id, ErrorCode.BAD_REQUEST, str(exc))
        try:
            index = core.propose_conf_change(change)
        except ProposalDropped as exc:  # an earlier change is not committed yet: ask again soon
            return Error(req.id, ErrorCode.BUSY, str(exc), leader=core.leader)
        log.info("proposed %s of node %d at index %d", req.op, req.node_id, index)
        return Proposed(req.id, index, core.term)

    def transfer(self, core: RaftCore, req: TransferLeader) -> WireMessage:
        """Start handing leadership to `req.node_id`, or with 0 to the most up-to-date voter
        (Ok's result names the target; none when no other voter is active)."""
        if core.role != Role.LEADER:
            return self._not_leader(core, req.id)
        if req.node_id == 0:
            target = core.hand_off_leadership()
            if target == NONE:
                return Error(req.id, ErrorCode.UNAVAILABLE, "no other voter can take over now")
        elif req.node_id not in core.conf.voters:
            return Error(req.id, ErrorCode.BAD_REQUEST, f"node {req.node_id} is not a voter")
        elif req.node_id == core.id:
            return Ok(req.id, str(core.id))  # it leads already
        else:
            target = req.node_id
            core.transfer_leader(target)
        log.info("leadership transfer to node %d requested", target)
        return Ok(req.id, str(target))

    def _refusal(self, core: RaftCore, request_id: int) -> Error | None:
        refusal = self._disk.refusal(request_id, leading=core.role == Role.LEADER)
        if refusal is not None:
            return refusal
        if core.role != Role.LEADER:
            return self._not_leader(core, request_id)
        return None

    def _not_leader(self, core: RaftCore, request_id: int) -> Error:
        return Error(request_id, ErrorCode.NOT_LEADER, f"node {self._node_id} is not the leader",
                     leader=core.leader)
