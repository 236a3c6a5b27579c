"""Applying committed entries to the database, and keeping their results for the waiters.

`EntryApplier` wraps zraft.store.Database for the store process:
- each batch of entries is applied in one SQLite transaction together with the applied index
  (zraft/store/DESIGN.md), so after a kill -9 the process resumes exactly where the file says;
- the results of the last `results_kept` entries are kept by index, with their terms, so that
  a WaitApplied for (index, term) learns the result or that another entry took the index;
- a disk error while applying (SQLITE_FULL, an I/O error) ends nothing: the batch rolled back,
  `disk_full` says why, and the same entries come back with the next fetch, DISK_RETRY_S
  later. Recording such an error as a result would make this node diverge;
- an entry written by a newer zraft (a command version this build cannot read) is handled
  the same way: the entries before it are applied, the store stops at it without exiting,
  `disk_full` says why (the raft process then hands leadership away and defers campaigns,
  as for a full disk: an upgraded node should lead), reads of what is applied go on, and it
  tries again every NEWER_RETRY_S. Answering such an entry with an error would make this
  node differ from the upgraded ones, which apply it;
- an entry that no build can decode is answered with an error result by every node and the
  applied index moves on (zraft.store.db): it never stops or crashes the store.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import apsw

from zraft.procs.shell import Counters
from zraft.raft import Entry, EntryKind
from zraft.store.apply import ApplyResult
from zraft.store.db import Database, NewerCommand
from zraft.wire.messages import AppliedResult, Error, ErrorCode, JsonValue, WaitApplied, WireMessage

log = logging.getLogger("zraft.store")

DISK_RETRY_S = 1.0
"""A batch that failed for lack of disk space is tried again this often."""
DISK_ERRORS = (apsw.FullError, apsw.IOError)
"""Errors of the node's disk, not of the entry: rolled back and retried, never a result."""
SYNC_IDLE_S = 1.0
"""Entries applied fewer than `sync_every` at a time are made durable at most this late."""
NEWER_RETRY_S = 1.0
"""An entry from a newer zraft is fetched and looked at again this often. Only a restart on a
newer build can apply it; the retry keeps the reason fresh for the raft process, which
forgets a store's reason after STORE_FULL_TTL_S (5 s) without a fetch."""


class EntryApplier:
    """The database, its applied index, and the results of recent entries; owned by the store
    process's loop thread."""

    def __init__(self, db_path: Path, results_kept: int, stats: Counters, sync_every: int = 0) -> None:
        self.db = Database(db_path)
        self._db_path = db_path
        self.applied = self.db.applied_index()
        self._sync_every = sync_every
        self._synced_at = float("-inf")
        self.durable = 0
        """The applied index at the last sync(): what the database holds after a power loss,
        at least. The raft process compacts its log only below it."""
        self._stats = stats
        self.sync(float("-inf"))  # what a kill -9 left in the page cache is not yet on disk
        self._results: OrderedDict[int, tuple[int, ApplyResult]] = OrderedDict()
        self._results_kept = results_kept
        self.disk_full = ""
        """Why entries cannot be applied now ("disk full: ..."); empty when fine."""
        self._retry_at = float("-inf")

    def close(self) -> None:
        self.db.close()

    def reopen(self) -> None:
        """Open the database again after its file was replaced (a snapshot image): the applied
        index is the new file's, and results kept for the old one are gone."""
        self.db = Database(self._db_path)
        self.applied = self.db.applied_index()
        self._results.clear()
        self.durable = 0
        self.sync(float("-inf"))

    def sync(self, now: float) -> None:
        """Make what is applied durable (Database.sync); a failed fsync leaves `durable` as
        it was, and is counted: the log then keeps its entries a while longer."""
        try:
            self.durable = self.db.sync()
        except OSError as exc:
            self._stats["sync_errors"] += 1
            log.warning("fsync of %s failed (%s); the raft log keeps its entries until one succeeds",
                        self._db_path, exc)
        self._synced_at = now

    def maybe_sync(self, now: float) -> None:
        """Sync after `sync_every` applied entries, or within SYNC_IDLE_S of the last apply
        when fewer came: few fsyncs under load, and an idle node's log can still be compacted."""
        behind = self.applied - self.durable
        if self._sync_every and behind > 0 and (behind >= self._sync_every or now - self._synced_at >= SYNC_IDLE_S):
            started = time.perf_counter()
            self.sync(now)
            # what a snapshot costs the write path (the sync holds the write lock): the stall
            # figure of zraft/store/DESIGN.md
            took_us = int((time.perf_counter() - started) * 1e6)
            self._stats["sync_max_us"] = max(self._stats["sync_max_us"], took_us)

    def waiting_for_disk(self, now: float) -> bool:
        """A failed batch is not to be tried again yet."""
        return bool(self.disk_full) and now < self._retry_at

    def apply(self, entries: list[Entry], now: float) -> bool:
        """Apply one batch; False when the disk refused it (nothing of it was applied)."""
        batch = [(e.index, e.data if e.kind == EntryKind.NORMAL and e.data else None) for e in entries]
        try:
            results = self.db.apply_entries(batch)
        except DISK_ERRORS as exc:
            self.applied = self.db.applied_index()  # a part may be in (an entry set foreign_keys)
            self._cannot_apply(exc, entries[0].index, now)
            return False
        except NewerCommand as exc:
            before = exc.index - entries[0].index
            if before > 0 and not self.apply(entries[:before], now):
                return False
            self._wait_for_upgrade(exc, now)
            return False
        if self.disk_full:
            log.warning("applying again from index %d (after: %s)", entries[0].index, self.disk_full)
            self.disk_full = ""
        for entry, result in zip(entries, results):
            self._results[entry.index] = (entry.term, result)
        while len(self._results) > self._results_kept:
            self._results.popitem(last=False)
        self.applied = self.db.applied_index()
        self._stats["applied_entries"] += len(entries)
        return True

    def _wait_for_upgrade(self, exc: NewerCommand, now: float) -> None:
        reason = f"cannot apply: {exc}; this node applies nothing from there on until it runs a newer zraft"
        if reason != self.disk_full:
            log.error("%s (reads of what is applied go on; looking again every %.1f s)", reason, NEWER_RETRY_S)
        self.disk_full = reason
        self._retry_at = now + NEWER_RETRY_S
        self._stats["apply_newer_entries"] += 1

    def _cannot_apply(self, exc: apsw.Error, index: int, now: float) -> None:
        if isinstance(exc, apsw.FullError):
            reason = f"disk full: {self._db_path}"
        else:
            reason = f"disk error: {self._db_path}: {exc}"
        if reason != self.disk_full:
            log.error("cannot apply entry %d (%s); reads go on, retrying every %.1f s",
                      index, reason, DISK_RETRY_S)
        self.disk_full = reason
        self._retry_at = now + DISK_RETRY_S
        self._stats["apply_disk_errors"] += 1

    def result_of(self, wait: WaitApplied) -> WireMessage:
        """The answer to a wait for an applied entry: its rendered result, or why not."""
        kept = self._results.get(wait.index)
        if kept is None:
            return Error(wait.id, ErrorCode.RESULT_UNAVAILABLE,
                         f"entry {wait.index} was applied but its result is no longer kept")
        term, result = kept
        if term != wait.term:
            return Error(wait.id, ErrorCode.LEADERSHIP_LOST, f"entry {wait.index} was replaced by one from term {term}")
        rendered: JsonValue = result.render(associative=wait.options.associative, blob_array=wait.options.blob_array)
        return AppliedResult(wait.id, wait.index, rendered)
