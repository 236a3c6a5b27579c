"""Jepsen-style chaos testing: history recording and checking (the cluster half comes later)."""

from __future__ import annotations

from zraft.chaos.checker import Report, Verdict, check_history
from zraft.chaos.history import Event, HistoryError, HistoryWriter, Operation, load_history

__all__ = ["Event", "HistoryError", "HistoryWriter", "Operation", "Report", "Verdict",
           "check_history", "load_history"]
