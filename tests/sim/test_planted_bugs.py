"""Deliberately broken variants of the core: the simulator must catch each one.

Each variant overrides one small hook of RaftCore in a subclass (never a switch in production
code). A checker that cannot catch these would pass a broken core too.
"""

from __future__ import annotations

from zraft.raft import HardState, Message, RaftCore
from zraft.sim.runner import run_seed

MAX_SEEDS = 400
STEPS = 5000


def first_violation(core_class: type[RaftCore], nodes: int = 3) -> tuple[int, str]:
    # Without the damage and wipe faults and blank-start recovery: these budgets were calibrated
    # before they existed (their own controls are in test_damage_fault.py, test_wipe_fault.py).
    # CommitsOldTermByCounting is the marginal one: 2 of 1,500 seeds catch it (109 and 1301),
    # 3 of 1,500 with blank-start recovery on (991, 1125, 1325).
    for seed in range(MAX_SEEDS):
        result = run_seed(seed, STEPS, nodes, core_factory=core_class, check_liveness=False, damage=False,
                          wipe=False, recover_blank=False)
        if result.violations:
            return seed, result.violations[0]
    raise AssertionError(f"{core_class.__name__} survived {MAX_SEEDS} seeds")


class CommitsOldTermByCounting(RaftCore):
    """Breaks §5.4.2 (Figure 8): counts replicas of entries from earlier terms."""

    def _can_commit_by_counting(self, index: int) -> bool:
        return True


class VotesForStaleLogs(RaftCore):
    """Breaks §5.4.1: grants votes without comparing logs."""

    def _candidate_log_ok(self, last_index: int, last_term: int) -> bool:
        return True


class RepliesBeforeDurable(RaftCore):
    """Breaks Figure 2's persistence rule: every message leaves before the write is durable."""

    def _split_messages(self, hard: HardState) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        return tuple(self._msgs + self._msgs_after), ()


class SkipsConsistencyCheck(RaftCore):
    """Breaks §5.3: appends entries without checking the previous entry's term."""

    def _log_consistent(self, index: int, log_term: int) -> bool:
        return index <= self.log.last_index()


class AppliesPastCommit(RaftCore):
    """Hands entries to the state machine as soon as they are durable, committed or not."""

    def _applicable_hi(self) -> int:
        return self.log.stable


def test_planted_old_term_commit_is_caught() -> None:
    seed, violation = first_violation(CommitsOldTermByCounting)
    assert any(rule in violation for rule in ("state-machine-safety", "leader-completeness",
                                              "linearizable-read", "apply")), violation


def test_planted_stale_log_vote_is_caught() -> None:
    _, violation = first_violation(VotesForStaleLogs)
    assert "leader-completeness" in violation or "state-machine-safety" in violation, violation


def test_planted_reply_before_durable_is_caught() -> None:
    _, violation = first_violation(RepliesBeforeDurable)
    assert "send-before-durable" in violation, violation


def test_planted_skipped_consistency_check_is_caught() -> None:
    _, violation = first_violation(SkipsConsistencyCheck)
    assert any(rule in violation for rule in ("log-matching", "state-machine-safety",
                                              "leader-completeness", "core-invariant")), violation


def test_planted_apply_past_commit_is_caught() -> None:
    _, violation = first_violation(AppliesPastCommit)
    assert "apply-uncommitted" in violation, violation


def test_correct_core_passes_the_same_seeds() -> None:
    """The planted tests mean nothing if the checker also flags the real core."""
    for seed in range(60):
        result = run_seed(seed, STEPS, 3)
        assert not result.violations, (seed, result.violations)
        assert result.live, seed
