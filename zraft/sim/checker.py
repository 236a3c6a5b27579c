"""Safety invariants of Raft, checked by the simulator after every event.

Each check is incremental (it looks only at what the last event changed), so that checking
after every step stays cheap enough for campaigns of millions of events. The properties are
Figure 3 of the Raft paper, plus the durability rules of the shell contract:

- election safety: at most one leader per term;
- log matching: two logs holding an entry with the same index and term agree on its data and
  on the term of the entry before it (which, by induction, makes the prefixes identical);
- leader completeness: a new leader's log holds every entry committed so far;
- state-machine safety: every node applies the same entry at each index, and only committed
  entries;
- the commit index of a node never goes backwards, nor does a durable term or vote;
- nothing that depends on a term, vote or log entry leaves a node before it is durable;
- a linearizable read never returns a read point older than a commit that preceded it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zraft.raft import NONE, Entry, HardState, Message, MsgType, RaftCore


@dataclass(slots=True)
class Violation:
    time: int
    node: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"t={self.time} node={self.node} {self.rule}: {self.detail}"


@dataclass(slots=True)
class Durable:
    """What one simulated node has on disk; only this survives a crash."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot_index: int = 0

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index


class Checker:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.time = 0
        self._leaders: dict[int, int] = {}
        self._entries: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._committed: dict[int, int] = {}
        self.max_committed = 0
        self._applied: dict[int, tuple[int, bytes]] = {}

    def fail(self, node: int, rule: str, detail: str) -> None:
        self.violations.append(Violation(self.time, node, rule, detail))

    # -- roles ------------------------------------------------------------------------------
    def on_leader(self, core: RaftCore) -> None:
        """Election safety and leader completeness, checked when a node becomes leader."""
        holder = self._leaders.setdefault(core.term, core.id)
        if holder != core.id:
            self.fail(core.id, "election-safety", f"term {core.term} has leaders {holder} and {core.id}")
        log = core.log
        for index in range(log.snapshot.index + 1, self.max_committed + 1):
            want = self._committed.get(index)
            if want is not None and log.term(index) != want:
                self.fail(core.id, "leader-completeness",
                          f"leader of term {core.term} lacks committed entry {index}@{want}")
                return

    # -- logs -------------------------------------------------------------------------------
    def on_entries(self, core: RaftCore, entries: tuple[Entry, ...]) -> None:
        """Log matching for entries about to be persisted."""
        log = core.log
        for entry in entries:
            prev_term = log.term(entry.index - 1)
            key = (entry.index, entry.term)
            seen = self._entries.get(key)
            value = (entry.data, -1 if prev_term is None else prev_term)
            if seen is None:
                self._entries[key] = value
            elif seen[0] != entry.data or (seen[1] != value[1] and -1 not in (seen[1], value[1])):
                self.fail(core.id, "log-matching",
                          f"entry {entry.index}@{entry.term} differs between logs")

    def on_commit(self, core: RaftCore, old_commit: int) -> None:
        log = core.log
        if log.committed < old_commit:
            self.fail(core.id, "commit-monotonic", f"commit went from {old_commit} to {log.committed}")
            return
        for index in range(max(old_commit, log.snapshot.index) + 1, log.committed + 1):
            term = log.term(index)
            if term is None:
                continue
            known = self._committed.setdefault(index, term)
            if known != term:
                self.fail(core.id, "state-machine-safety",
                          f"index {index} committed with term {known} and {term}")
        self.max_committed = max(self.max_committed, log.committed)

    # -- state machine ----------------------------------------------------------------------
    def on_apply(self, node: int, entry: Entry) -> None:
        if self._committed.get(entry.index) != entry.term:
            self.fail(node, "apply-uncommitted", f"applied {entry.index}@{entry.term} before it committed")
        known = self._applied.setdefault(entry.index, (entry.term, entry.data))
        if known != (entry.term, entry.data):
            self.fail(node, "state-machine-safety", f"index {entry.index} applied differently")

    def on_snapshot_install(self, node: int, index: int, term: int) -> None:
        if index and self._committed.get(index, term) != term:
            self.fail(node, "snapshot", f"snapshot at {index}@{term} disagrees with commits")

    # -- durability -------------------------------------------------------------------------
    def on_persist_hard_state(self, node: int, old: HardState, new: HardState) -> None:
        if new.term < old.term:
            self.fail(node, "durable-term", f"durable term went from {old.term} to {new.term}")
        elif new.term == old.term and old.vote not in (NONE, new.vote):
            self.fail(node, "durable-vote", f"durable vote in term {new.term} changed {old.vote}->{new.vote}")
        if new.commit < old.commit:
            self.fail(node, "commit-monotonic", f"durable commit went {old.commit}->{new.commit}")

    def on_send(self, msg: Message, durable: Durable) -> None:
        """Nothing that depends on a term, vote or entry may leave before it is durable."""
        hs = durable.hard_state
        if msg.type in (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP):
            return
        if msg.term > hs.term:
            self.fail(msg.frm, "send-before-durable", f"{msg.type.name} of term {msg.term} sent "
                      f"with durable term {hs.term}")
        elif msg.type == MsgType.VOTE_RESP and not msg.reject and msg.term == hs.term and hs.vote != msg.to:
            self.fail(msg.frm, "send-before-durable", f"vote for {msg.to} in term {msg.term} not durable")
        elif msg.type == MsgType.VOTE and msg.term == hs.term and hs.vote != msg.frm:
            self.fail(msg.frm, "send-before-durable", f"self-vote in term {msg.term} not durable")
        elif msg.type == MsgType.APP_RESP and not msg.reject and msg.index > durable.last_index():
            self.fail(msg.frm, "send-before-durable",
                      f"acked {msg.index} with durable log up to {durable.last_index()}")

    # -- reads ------------------------------------------------------------------------------
    def on_read(self, node: int, read_index: int, commit_at_request: int) -> None:
        if read_index < commit_at_request:
            self.fail(node, "linearizable-read",
                      f"read index {read_index} older than commit {commit_at_request} at request")
