"""Whether this node can take writes, as far as its disks go, and what follows from that.

Two disks matter, and they fail differently:
- the Raft log's: a failed write (ENOSPC or EDQUOT: "disk full", any other OSError: "disk
  error") means nothing of that Ready is durable. The raft shell reloads the log and rebuilds
  the core from the disk exactly as a restart would; this part then keeps the node *frozen*
  for PERSIST_RETRY_S (peer traffic dropped, no ticks: a follower that cannot persist must not
  acknowledge) and refuses writes until a write succeeds again;
- the store's: the store reports, with every fetch, why it cannot apply (empty when fine).
  The report is forgotten STORE_FULL_TTL_S after the last fetch (the store process died).

While either disk is failing, the core defers its campaigns (a healthy node wins first) and a
leader hands leadership to the most up-to-date active voter, trying again every
TRANSFER_RETRY_S (the core picks the target, rotating through the candidates). Writes are
refused with a clear error: by a node whose log cannot be written, always; by a node whose
store cannot apply, only while it leads (a follower answers not_leader, and its api forwards).
"""

from __future__ import annotations

import logging
from pathlib import Path

from zraft.logstore import fsutil
from zraft.procs.shell import Counters
from zraft.raft import NONE, RaftCore, Role
from zraft.wire.messages import Error, ErrorCode

log = logging.getLogger("zraft.raft_proc")

PERSIST_RETRY_S = 1.0
"""After a failed log write the node sits out this long before it tries to persist again."""
STORE_FULL_TTL_S = 5.0
"""The store's "disk full" report (carried by its fetches, at least every second while it
lasts) is forgotten after this long without a fetch, e.g. when the store process died."""
TRANSFER_RETRY_S = 1.0
"""A leader that cannot take writes tries a leadership transfer this often."""


class DiskHealth:
    """The disk states of one node; owned by the raft process's loop thread."""

    def __init__(self, node_id: int, log_dir: Path, stats: Counters) -> None:
        self._node_id = node_id
        self._log_dir = log_dir
        self._stats = stats
        self.log_full = ""
        """Why the log cannot be written ("disk full: ..."); empty when fine."""
        self._log_code = ErrorCode.DISK_FULL
        self._frozen_until = float("-inf")
        self.store_full = ""
        """The store's report of why it cannot apply; empty when fine."""
        self._store_heard = float("-inf")
        self._next_transfer = float("-inf")

    @property
    def reason(self) -> str:
        """Why this node takes no writes; empty when it can."""
        return self.log_full or self.store_full

    def frozen(self, now: float) -> bool:
        """Sitting out after a failed log write."""
        return bool(self.log_full) and now < self._frozen_until

    def log_failed(self, exc: OSError, now: float) -> float:
        """A log write failed: freeze until the returned time."""
        full = exc.errno in fsutil.NO_SPACE
        self.log_full = f"{'disk full' if full else 'disk error'}: {self._log_dir}: {exc.strerror or exc}"
        self._log_code = ErrorCode.DISK_FULL if full else ErrorCode.UNAVAILABLE
        self._stats["persist_failures"] += 1
        self._frozen_until = now + PERSIST_RETRY_S
        log.error("cannot write the log (%s): dropping what is not durable, reloading from disk, "
                  "refusing writes; retrying in %.1f s", self.log_full, PERSIST_RETRY_S)
        return self._frozen_until

    def log_written(self) -> None:
        """A log write succeeded."""
        if self.log_full:
            log.warning("the log persists again (after: %s); taking part again", self.log_full)
            self.log_full = ""

    def store_reported(self, reason: str, now: float) -> None:
        """The store's latest word on whether it can apply (from a fetch)."""
        if reason != self.store_full:
            if reason:
                log.warning("the store cannot apply: %s", reason)
            else:
                log.warning("the store applies again")
            self.store_full = reason
        self._store_heard = now

    def refusal(self, request_id: int, leading: bool) -> Error | None:
        """The reply to a write this node must refuse because a disk is failing, else None."""
        if self.log_full:
            self._stats["proposals_disk_full"] += 1
            return Error(request_id, self._log_code,
                         f"{self.log_full}; node {self._node_id} takes no writes until it can persist again")
        if self.store_full and leading:
            self._stats["proposals_disk_full"] += 1
            return Error(request_id, ErrorCode.DISK_FULL,
                         f"{self.store_full}; node {self._node_id} takes no writes until its store can apply")
        return None

    def read_refusal(self, request_id: int, now: float) -> Error | None:
        """The reply to a read-index request while frozen, else None."""
        if not self.frozen(now):
            return None
        return Error(request_id, self._log_code, f"{self.log_full}; node {self._node_id} is sitting out")

    def failure(self) -> tuple[ErrorCode, str]:
        """The code and message for requests the failing log ends."""
        return self._log_code, self.log_full

    def steer(self, core: RaftCore, now: float) -> None:
        """Keep the core's campaign deferral in step with the disks, and move leadership
        away from a node that cannot take writes."""
        if self.store_full and now - self._store_heard > STORE_FULL_TTL_S:
            log.warning("no word from the store for %.0f s: forgetting its report (%s)",
                        STORE_FULL_TTL_S, self.store_full)
            self.store_full = ""
        deferred = bool(self.reason)
        if deferred != core.campaign_deferred:
            core.defer_campaign(deferred)
            log.info("campaigning %s", "deferred: this node cannot take writes" if deferred else "normal again")
        if not deferred or core.role != Role.LEADER or core.lead_transferee != NONE or now < self._next_transfer:
            return
        self._next_transfer = now + TRANSFER_RETRY_S
        target = core.hand_off_leadership()
        if target != NONE:
            log.info("handing leadership to node %d: this node cannot take writes", target)
