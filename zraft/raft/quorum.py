"""Majority arithmetic, written once.

Every decision Raft takes on behalf of the cluster rests on one fact: any two majorities of
the same configuration share at least one server. An election won by a majority (§5.2) cannot
coexist with another in the same term; an entry stored on a majority (§5.3) is held by at
least one voter of every later winning majority, which is what makes it committed (§5.4);
and a leader that hears from a majority within a round knows that no other leader has
committed anything it lacks (dissertation §6.4 read-index rounds, §6.2 check-quorum). The
functions here are that fact as arithmetic, with no Raft state of their own: callers pass the
voters of the configuration in force and what each one said.

Only voters ever count. Learners receive entries but take no part in any majority (D§4.2.1),
so callers pass `conf.voters`, never every member.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container


def majority(voter_count: int) -> int:
    """The fewest voters that form a majority of `voter_count`: more than half of them, so
    that any two such sets intersect. A configuration of no voters has no majority (1 > 0)."""
    return voter_count // 2 + 1


def has_quorum(voters: Collection[int], acked: Container[int]) -> bool:
    """Whether the voters found in `acked` (votes granted or refused, leases, read-round
    acknowledgements) are a majority of `voters`. Anything in `acked` that is not a voter is
    ignored; with no voters at all the answer is False."""
    return sum(1 for node in voters if node in acked) >= majority(len(voters))


def committed_index(voters: Collection[int], match_of: Callable[[int], int]) -> int:
    """The largest index that at least a majority of `voters` hold, given each voter's match
    index (`match_of(voter)`); 0 when there are no voters.

    With the matches sorted ascending, the voters at positions n - majority(n) and beyond
    number exactly majority(n), and all of them hold the entry at that position's index; no
    larger index is held by as many (§5.3: an entry is committed once stored on a majority).
    Whether the leader may commit that index by counting is a further rule (§5.4.2) that the
    caller applies."""
    matches = sorted(match_of(node) for node in voters)
    if not matches:
        return 0
    return matches[len(matches) - majority(len(matches))]
