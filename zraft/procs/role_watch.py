"""RoleWatch: one log line each time this node's role, term or vote floor changes.

Kept apart from the raft shell so that the shell only wires; what a change means for pending
reads is the shell's business (a new leader ends them), and this part only reports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from zraft.procs.removal import Removal
from zraft.raft import NONE, RaftCore, Ready
from zraft.raft.core import RECOVERY_FLOOR

log = logging.getLogger("zraft.raft_proc")


class RoleWatch:
    """The leader, term and vote floor last logged; owned by the raft process's loop thread."""

    def __init__(self, core: RaftCore) -> None:
        self._seen = (NONE, core.term, core.vote_floor)

    def observe(self, rd: Ready, core: RaftCore) -> tuple[int, int] | None:
        """Log what `rd` changed; (old leader, new leader) when the leader changed."""
        leader, term, floor = self._seen
        changed = None
        if rd.soft_state is not None:
            if rd.soft_state.leader != leader:
                changed = (leader, rd.soft_state.leader)
                leader = rd.soft_state.leader
            log.info("role %s, leader %d, term %d", rd.soft_state.role.name.lower(), leader, core.term)
        hard = rd.hard_state
        if hard is not None and hard.term != term:
            term = hard.term
            log.info("term %d (vote %d)", hard.term, hard.vote)
        if hard is not None and hard.vote_floor() != floor:
            old, floor = floor, hard.vote_floor()
            if core.recovering:
                pass  # the blank-start floor: said once at start
            elif old == RECOVERY_FLOOR:
                log.warning("every voter answered: term %d, vote floor %s%s", hard.term, floor,
                            "" if floor > (core.log.last_term(), core.log.last_index()) else " (already reached)")
            elif floor > old:
                log.warning("vote floor raised to %s", floor)
            else:
                log.warning("the log reached the vote floor (last index %d): voting and campaigning "
                            "normally again", core.log.last_index())
        self._seen = (leader, term, floor)
        return changed

    def rebuilt(self, core: RaftCore) -> None:
        """The core was rebuilt from the disk (a failed log write): it follows no leader now."""
        if self._seen[0] != NONE:
            log.info("role follower, leader 0, term %d (rebuilt from disk)", core.term)
        self._seen = (NONE, core.term, core.vote_floor)


@dataclass(slots=True)
class Roles:
    """The raft shell's two parts about this node's place in the cluster, side by side."""

    watch: RoleWatch
    removal: Removal
