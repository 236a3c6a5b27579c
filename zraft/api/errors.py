"""Expected request outcomes of the API process, as exceptions.

Every failure a request can meet is one of these; `code` is the wire code carried by
`zraft.wire.messages.Error` (so that an error crosses a forwarding hop unchanged) and
`zraft.api.http` maps each class to one HTTP status:

    ApiError                    (code "internal")      -> 200 {"results": [], "error": ...}
    +-- BadRequest              ("bad_request")        -> 400 text
    +-- TooLarge                ("too_large")          -> 413 text
    +-- NotLeader               ("not_leader")         -> forwarded / 301 / 503 "leader not found"
    +-- Unavailable             ("unavailable")        -> 503 text
    |   +-- Busy                ("busy")               -> 503 text
    +-- Timeout                 ("timeout")            -> 200 JSON error (as rqlite)
    +-- LeadershipLost          ("leadership_lost")    -> 200 JSON error (as rqlite)
    +-- DiskFull                ("disk_full")          -> 503 JSON error
    +-- NotApplied              ("not_applied")        -> 200 JSON error

SQL errors are never exceptions: they are per-statement results.
"""

from __future__ import annotations

from typing import ClassVar

LEADER_NOT_FOUND = "leader not found"


class ApiError(Exception):
    """A request failed as a whole; nothing about it is known to have changed unless the
    subclass says otherwise (Timeout, LeadershipLost: the outcome is unknown)."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, leader: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.leader = leader


class BadRequest(ApiError):
    code = "bad_request"


class TooLarge(ApiError):
    code = "too_large"


class NotLeader(ApiError):
    """This node cannot serve the request; `leader` is the leader's node id, 0 if unknown."""

    code = "not_leader"


class Unavailable(ApiError):
    code = "unavailable"


class Busy(Unavailable):
    code = "busy"


class Timeout(ApiError):
    code = "timeout"


class LeadershipLost(ApiError):
    code = "leadership_lost"


class DiskFull(ApiError):
    """A node's disk is full: the write was refused before anything was appended (safe to
    retry), or a read cannot be served until that node can apply the log again. The message
    starts with "disk full: " and names the path."""

    code = "disk_full"


class NotApplied(ApiError):
    """The write reached the log, but this node cannot apply it now (its disk is full): its
    outcome is unknown, as after a timeout. The message starts with "disk full: "."""

    code = "not_applied"


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (ApiError, BadRequest, TooLarge, NotLeader, Unavailable, Busy, Timeout, LeadershipLost,
                DiskFull, NotApplied)
}


def from_wire(code: str, message: str, leader: int = 0) -> ApiError:
    """The exception for a wire `Error` (unknown codes become a plain ApiError)."""
    cls = _BY_CODE.get(code, ApiError)
    return cls(message or code, leader=leader)
