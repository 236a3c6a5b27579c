"""The step budget of one entry: SQLite VM steps counted with the progress handler.

A write that runs for minutes blocks applying on every node, and one that never ends (a
recursive CTE without a limit) would wedge every store for good, since a restart replays
it. Wall time cannot bound it: each node would stop it at a different point. SQLite's VM
steps can. The progress handler is called every ``interval`` steps of a statement's
program (and of every program it runs: triggers, nested statements of virtual tables), at
the same points on every node, because the steps are a function of the SQL, the schema and
the data only. Statements are prepared afresh for every execution on the writer (never
taken from the statement cache), so even the handler calls SQLite makes while preparing a
very large statement happen alike on every node.

The budget (``Command.budget``, from ``store.max_write_steps`` of the proposer) covers all
the statements of one entry together: ``steps`` grows by ``interval`` at each call, and the
call that takes it past the budget interrupts the statement. That statement fails with
``exceeded_message(budget)``; so does every later statement of the entry, without running.
Only user statements count (``armed``); the store's own never do.
"""

from __future__ import annotations

import apsw

MAX_INTERVAL = 10_000
"""Most VM steps between two handler calls: about 0.1 ms of SQLite work, a negligible cost."""


def exceeded_message(budget: int) -> str:
    return f"statement exceeded the entry's budget of {budget} SQLite VM steps"


def interval_for(budget: int) -> int:
    """Steps between handler calls for ``budget``: a function of the budget alone."""
    return max(1, min(MAX_INTERVAL, budget // 16))


class StepBudget:
    """The writer connection's progress handler and the budget of the entry being applied."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self._interval = 0
        self.budget: int | None = None
        self.steps = 0
        self.armed = False
        self.exceeded = False
        """The current entry ran out: its remaining statements fail without running."""

    def begin_entry(self, budget: int | None) -> None:
        """Start counting for an entry with ``budget`` steps (None: no limit, unstamped entries)."""
        self.budget, self.steps, self.exceeded, self.armed = budget, 0, False, False
        interval = 0 if budget is None else interval_for(budget)
        if interval != self._interval:
            self._conn.set_progress_handler(self._tick if interval else None, interval or 100)
            self._interval = interval

    def end_entry(self) -> None:
        self.budget, self.armed = None, False

    @property
    def message(self) -> str:
        return exceeded_message(self.budget or 0)

    def _tick(self) -> bool:
        if not self.armed or self.budget is None:
            return False
        self.steps += self._interval
        if self.steps > self.budget:
            self.exceeded = True
            return True
        return False
