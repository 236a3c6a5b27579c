"""A removed node learns that it was removed, and stops campaigning (issue 12).

The entry that removes a node takes effect on the leader as soon as it is appended (Raft's
rule: a server uses the newest configuration in its log), so the leader stops replicating to
that node at once and the node usually never receives it. Left alone it would keep asking for
(pre-)votes every election timeout, forever, and still report itself a member.

- **Leader side:** a vote or pre-vote request from a node outside the leader's configuration
  is answered, besides the core's refusal, with a `MemberRemoved` notice (at most once a
  second per node). Only a leader sends it: its log holds every committed entry, so a node
  absent from its newest configuration was removed (or never added), whereas a follower might
  simply not have heard yet of a node's addition.
- **Removed side:** a notice from a node at this node's term or later sets `removed_by`;
  while it is set the shell does not tick the core, so the node never campaigns (it still
  answers what it receives). Any AppendEntries, heartbeat or snapshot from a leader clears it:
  the node was added back.

Nothing here is durable: a removed node that restarts asks for votes once more and is told
again. The core is not involved; it refuses a non-member's votes by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from zraft.procs.shell import Counters
from zraft.raft import Message, MsgType, RaftCore, Role
from zraft.wire.messages import MemberRemoved

log = logging.getLogger("zraft.raft_proc")

TELL_EVERY_S = 1.0
_LEADER_TRAFFIC = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP})


class Removal:
    """Both sides of the notice; owned by the raft process's loop thread."""

    def __init__(self, send: Callable[[MemberRemoved], bool], stats: Counters) -> None:
        self._send = send
        self._stats = stats
        self._told: dict[int, float] = {}
        self.removed_by = 0
        """The leader that said this node was removed; 0 while it is a member, as far as it knows."""

    def on_raft(self, msg: Message, core: RaftCore, now: float) -> None:
        """Look at a Raft message before the core steps it."""
        if msg.type in _LEADER_TRAFFIC:
            if self.removed_by:
                log.warning("node %d sends this node entries again: it is a member once more", msg.frm)
                self.removed_by = 0
            return
        if (core.role == Role.LEADER and msg.type in (MsgType.VOTE, MsgType.PRE_VOTE)
                and msg.frm not in core.conf.members()
                and now - self._told.get(msg.frm, float("-inf")) >= TELL_EVERY_S):
            self._told[msg.frm] = now
            if self._send(MemberRemoved(core.id, msg.frm, core.term)):
                self._stats["removed_notices_sent"] += 1

    def on_notice(self, notice: MemberRemoved, core: RaftCore) -> None:
        if notice.term < core.term or self.removed_by == notice.frm:
            return
        self.removed_by = notice.frm
        self._stats["removed_notices_received"] += 1
        log.warning("node %d (leader in term %d) says this node was removed from the cluster: it no longer "
                    "campaigns; stop it, or add it again", notice.frm, notice.term)

    @property
    def may_campaign(self) -> bool:
        return not self.removed_by
