"""Expected request outcomes of the API process, as exceptions.

Every failure a request can meet is one of these; `code` is the `ErrorCode` carried by
`zraft.wire.messages.Error` (so that an error crosses a forwarding hop unchanged) and
`zraft.api.http` maps each class to one HTTP status:

    ApiError                    (INTERNAL)             -> 200 {"results": [], "error": ...}
    +-- BadRequest              (BAD_REQUEST)          -> 400 text
    +-- TooLarge                (TOO_LARGE)            -> 413 text
    +-- NotLeader               (NOT_LEADER)           -> forwarded / 301 / 503 "leader not found"
    +-- Unavailable             (UNAVAILABLE)          -> 503 text
    |   +-- Busy                (BUSY)                 -> 503 text
    |   +-- NotSent             (UNAVAILABLE)          -> 503 text (a forward: NotLeader, asked again)
    +-- Timeout                 (TIMEOUT)              -> 200 JSON error (as rqlite)
    +-- LeadershipLost          (LEADERSHIP_LOST)      -> 200 JSON error (as rqlite)
    +-- DiskFull                (DISK_FULL)            -> 503 JSON error
    +-- NotApplied              (NOT_APPLIED)          -> 200 JSON error
    +-- ResultUnavailable       (RESULT_UNAVAILABLE)   -> 200 JSON error

COMPACTED has no class: it answers FetchEntries, which the api never sends. REJECTED is no
longer sent (a membership change that must wait is BUSY); it is kept so that an older peer's
answer still decodes. Should either arrive it reads as a plain ApiError (INTERNAL).

SQL errors are never exceptions: they are per-statement results.
"""

from __future__ import annotations

from typing import ClassVar

from zraft.wire.messages import ErrorCode

LEADER_NOT_FOUND = "leader not found"


class ApiError(Exception):
    """A request failed as a whole; nothing about it is known to have changed unless the
    subclass says otherwise (Timeout, LeadershipLost, NotApplied: the outcome is unknown)."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, leader: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.leader = leader


class BadRequest(ApiError):
    code = ErrorCode.BAD_REQUEST


class TooLarge(ApiError):
    code = ErrorCode.TOO_LARGE


class NotLeader(ApiError):
    """This node cannot serve the request; `leader` is the leader's node id, 0 if unknown."""

    code = ErrorCode.NOT_LEADER


class Unavailable(ApiError):
    code = ErrorCode.UNAVAILABLE


class Busy(Unavailable):
    code = ErrorCode.BUSY


class NotSent(Unavailable):
    """The request never left this process: no connection to the far end took it in time.
    Nothing can have happened there, so it is safe to send again, elsewhere too."""


class Timeout(ApiError):
    code = ErrorCode.TIMEOUT


class LeadershipLost(ApiError):
    code = ErrorCode.LEADERSHIP_LOST


class DiskFull(ApiError):
    """A node's disk is full: the write was refused before anything was appended (safe to
    retry), or a read cannot be served until that node can apply the log again. The message
    starts with "disk full: " and names the path."""

    code = ErrorCode.DISK_FULL


class NotApplied(ApiError):
    """The write reached the log, but this node cannot apply it now (its disk is full): its
    outcome is unknown, as after a timeout. The message starts with "disk full: "."""

    code = ErrorCode.NOT_APPLIED


class ResultUnavailable(ApiError):
    """The write was applied, but the store no longer keeps its result (it waited too long
    to ask): the change is made, its per-statement results are lost."""

    code = ErrorCode.RESULT_UNAVAILABLE


_BY_CODE: dict[ErrorCode, type[ApiError]] = {
    cls.code: cls
    for cls in (ApiError, BadRequest, TooLarge, NotLeader, Unavailable, Busy, Timeout, LeadershipLost,
                DiskFull, NotApplied, ResultUnavailable)
}


def from_wire(code: ErrorCode, message: str, leader: int = 0) -> ApiError:
    """The exception for a wire `Error` (a code without a class becomes a plain ApiError)."""
    cls = _BY_CODE.get(code, ApiError)
    return cls(message or code.value, leader=leader)
