"""Jepsen-style chaos testing: `zraft chaos` (runner.py) and its history checkers; see DESIGN.md."""

from __future__ import annotations

from zraft.chaos.checker import Report, Verdict, check_history
from zraft.chaos.history import Event, HistoryError, HistoryWriter, Operation, load_history

__all__ = ["Event", "HistoryError", "HistoryWriter", "Operation", "Report", "Verdict",
           "check_history", "load_history"]
