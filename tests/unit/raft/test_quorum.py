"""Majority arithmetic (zraft.raft.quorum): the one place where "a majority of the voters" is
computed, for elections (§5.2), commitment (§5.3, §5.4), check-quorum (dissertation §6.2) and
read-index rounds (dissertation §6.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zraft.raft.quorum import committed_index, has_quorum, majority


@pytest.mark.parametrize(("voters", "expected"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3),
                                                  (5, 3), (6, 4), (7, 4)])
def test_majority_is_more_than_half(voters: int, expected: int) -> None:
    """A majority is more than half of the voters, so any two majorities share a voter: that
    shared voter is why two leaders cannot both win a term and why a committed entry
    survives into every later leader's log. With no voters there is no majority at all.
    Reference: §5.2, §5.4"""
    assert majority(voters) == expected
    assert 2 * majority(voters) > voters


def test_has_quorum_counts_only_voters() -> None:
    """Only voters count toward a majority: acknowledgements from learners or strangers are
    ignored, however many.
    Reference: §5.2, dissertation §4.2.1"""
    voters = (1, 2, 3)
    assert has_quorum(voters, {1, 2})
    assert has_quorum(voters, {1, 2, 3})
    assert not has_quorum(voters, {1})
    assert not has_quorum(voters, {1, 4, 5, 6})
    assert has_quorum((1, 2, 3, 4), {2, 3, 4})
    assert not has_quorum((1, 2, 3, 4), {1, 2})  # half is not a majority


def test_has_quorum_without_voters_is_false() -> None:
    """A configuration with no voters never has a quorum (its majority would be one voter)."""
    assert not has_quorum((), {1, 2, 3})
    assert not has_quorum((), set())


def test_has_quorum_accepts_any_container() -> None:
    """Acks may be a set, a dict (keys) or a sequence."""
    assert has_quorum((1, 2, 3), {1: True, 3: False})
    assert has_quorum((1, 2, 3), [3, 2])
    assert not has_quorum((1, 2, 3), frozenset({2}))


@pytest.mark.parametrize(("matches", "expected"), [
    ({}, 0),
    ({1: 5}, 5),
    ({1: 5, 2: 3}, 3),
    ({1: 5, 2: 3, 3: 0}, 3),
    ({1: 0, 2: 0, 3: 7}, 0),
    ({1: 9, 2: 8, 3: 7, 4: 6}, 7),  # four voters: three make a majority
    ({1: 9, 2: 8, 3: 7, 4: 6, 5: 1}, 7),
    ({1: 4, 2: 4, 3: 4, 4: 4, 5: 4}, 4),
])
def test_committed_index_is_held_by_a_majority(matches: dict[int, int], expected: int) -> None:
    """An entry is committed once the leader has replicated it on a majority of the voters;
    the largest such index is the one a majority of match indexes reach.
    Reference: §5.3"""
    assert committed_index(tuple(matches), matches.__getitem__) == expected


def test_committed_index_asks_only_about_voters() -> None:
    """Learners' matches are never consulted: `match_of` is called for the voters alone."""
    asked: list[int] = []

    def match_of(node: int) -> int:
        asked.append(node)
        return {1: 3, 2: 3, 3: 1, 4: 9}[node]
    assert committed_index((1, 2, 3), match_of) == 3
    assert sorted(asked) == [1, 2, 3]


def naive_committed_index(voters: tuple[int, ...], matches: dict[int, int]) -> int:
    """For each candidate index, count the voters whose match reaches it; keep the largest
    index a majority reaches (0 if none)."""
    best = 0
    for index in set(matches.values()) | {0}:
        holders = sum(1 for v in voters if matches[v] >= index)
        if holders * 2 > len(voters):
            best = max(best, index)
    return best


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.dictionaries(st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=30),
                       max_size=9))
def test_committed_index_matches_naive_reference(matches: dict[int, int]) -> None:
    """committed_index agrees with counting, index by index, how many voters hold it.
    Reference: §5.3"""
    voters = tuple(matches)
    assert committed_index(voters, matches.__getitem__) == naive_committed_index(voters, matches)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sets(st.integers(min_value=1, max_value=9), max_size=9),
       st.sets(st.integers(min_value=1, max_value=12)))
def test_has_quorum_matches_counting(voters: set[int], acked: set[int]) -> None:
    """has_quorum is "more than half of the voters acknowledged"."""
    assert has_quorum(tuple(sorted(voters)), acked) == (2 * len(voters & acked) > len(voters))
