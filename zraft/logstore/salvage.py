"""Salvage of a log whose synced data is damaged, and its quarantine.

`load()` refuses a log with damage in synced data (LogCorruptError). The node must not serve
from it, yet most of it is still readable, and its peers hold the rest. `salvage()` reads what
can be trusted; `quarantine()` moves the damaged folder aside (never deleted) and installs a
fresh log holding only that, plus a *vote floor* (see zraft/raft/DESIGN.md, "A log cut short
by damage"), with which the node rejoins and fetches the rest from the leader.

What can be trusted, and why (details in DESIGN.md, "Salvage"):

- **The prefix.** Records before the first damaged one replay to the log as it was at that
  point, ending at `prefix_last`. Its entries up to the commit index recorded before the damage
  are committed, so no later record can have overwritten them; entries past it may have been
  (by the damaged record itself, whose index is unreadable). The salvaged log therefore ends
  at p = that commit index (at least the snapshot): every entry in it is still in the node's
  true log, and committed.
- **The latest hard state.** Only from a HARD_STATE or CHECKPOINT record *after* the damage:
  the damaged record may itself have been the latest hard state, whose term and vote the node
  must never forget. Without one, salvage is refused.
- **The last log id L the node had** (the floor). The last record after the damage that sets
  it (an entry, a checkpoint, a snapshot that empties the log) gives it exactly. If the
  damaged record may have been the last such record, an upper bound is used instead: its index
  is at most prefix_last + 1 (an entry) or the later commit index (a snapshot), its term at
  most the latest term. A floor too high is safe; it only delays the node's voting.

Salvage is refused (the node keeps refusing to start, and an operator must replace its data)
whenever one of these cannot be established: damage in a segment header or checkpoint, a
damaged record whose length is wrong (the records after it cannot be found for certain),
damage in more than one place, records after the damage that do not decode.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from zraft.logstore import fsutil
from zraft.logstore.errors import LogCorruptError, LogStoreError
from zraft.logstore.index import LogIndex
from zraft.logstore.reader import read_entries
from zraft.logstore.records import (
    FRAME_HEADER,
    Frame,
    RecordFormatError,
    RecordType,
    decode_checkpoint,
    decode_entry_head,
    decode_hard_state,
    decode_snapshot,
    decode_watermark,
    read_frame,
)
from zraft.logstore.recovery import replay_all
from zraft.logstore.segment import (
    FILE_HEADER,
    SegmentScan,
    durable_claim_after,
    list_segments,
    read_header,
    scan_segment,
)
from zraft.raft.types import Entry, HardState, SnapshotMeta

log = logging.getLogger(__name__)

SALVAGE_SUFFIX = ".salvage"
"""The new log is built in `<log dir>.salvage` and renamed into place once complete."""
COMPLETE_MARKER = "SALVAGED"
"""Written last into the new log's folder: its presence means the folder is complete. It stays
in the log folder afterwards as a note for operators (the log store ignores other files)."""


class SalvageRefused(LogStoreError):
    """The damaged log cannot be salvaged safely; an operator must replace the node's data."""


@dataclass(slots=True, frozen=True)
class Salvaged:
    """What a damaged log still tells for certain."""

    snapshot: SnapshotMeta
    entries: tuple[Entry, ...]
    hard_state: HardState
    """Latest term and vote; commit at most the last salvaged entry; vote floor at least L."""
    damage: LogCorruptError
    prefix_last: int
    """Last log index just before the damaged record."""
    lost_last: tuple[int, int]
    """L, the (term, index) of the last entry the node had; an upper bound if not `exact`."""
    exact: bool

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot.index

    def describe(self) -> str:
        kind = "exactly" if self.exact else "at most (bound)"
        return (f"damage at {self.damage}; salvaged entries {self.snapshot.index + 1}..{self.last_index()} "
                f"(the log reached {self.prefix_last} before the damaged record); the log ended {kind} at "
                f"term {self.lost_last[0]} index {self.lost_last[1]}; hard state term {self.hard_state.term} "
                f"vote {self.hard_state.vote}; vote floor {self.hard_state.vote_floor()}")


def salvage(directory: str | os.PathLike[str], damage: LogCorruptError) -> Salvaged:
    """Read what the damaged log in `directory` still tells for certain; `damage` is the
    error load() raised. Reads only. Raises SalvageRefused when it cannot be done safely."""
    directory = Path(directory)
    found = list_segments(directory)
    seqs = [seq for seq, _ in found]
    if not seqs or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        raise SalvageRefused(f"{directory}: segments missing or none at all")
    paths = [path for _, path in found]
    try:
        k = [os.fspath(p) for p in paths].index(damage.path)
    except ValueError:
        raise SalvageRefused(f"the damage is not in a segment of {directory}: {damage}") from None
    damaged = _damaged_segment(seqs[k], paths[k], damage.offset, is_last=k == len(paths) - 1)
    try:
        before = [scan_segment(seqs[j], paths[j], is_last=False) for j in range(k)]
        index, _ = replay_all([*before, damaged.head])
        after = [scan_segment(seqs[j], paths[j], is_last=j == len(paths) - 1) for j in range(k + 1, len(paths))]
    except LogCorruptError as exc:
        raise SalvageRefused(f"damage in more than one place, or not in a record: {exc}") from None
    hard, last = _state_after(damaged, [s for s in after if not s.discard])
    if hard is None:
        raise SalvageRefused(f"no hard state record follows the damaged record at {damage.path} offset "
                             f"{damage.offset}: it may itself have been the latest term and vote, which "
                             "this node must never forget")
    prefix_last = index.last_index()
    exact = last is not None
    if last is None:
        last = (hard.term, max(prefix_last + 1, hard.commit))
    snap = index.snap
    keep = max(snap.index, min(prefix_last, index.hard.commit))
    entries = _read(index, snap.index + 1, keep + 1, paths, seqs[0])
    floor = max(last, hard.vote_floor())
    new_hard = HardState(hard.term, hard.vote, max(snap.index, min(hard.commit, keep)), *floor)
    return Salvaged(snap, tuple(entries), new_hard, damage, prefix_last, last, exact)


@dataclass(slots=True)
class _Damaged:
    head: SegmentScan  # the segment with only the frames before the damage
    tail: list[Frame]  # verified frames after the damaged record
    data: bytes


def _damaged_segment(seq: int, path: Path, offset: int, is_last: bool) -> _Damaged:
    """Split the damaged segment around the one damaged record at `offset`.

    The records after it are found where its own length field says it ends: the length is
    trusted only because a verified record (or the clean end of the segment) starts exactly
    there. Searching further for a valid-looking frame could land inside entry data, where a
    client may have stored anything, including bytes that look like a hard state."""
    full = _frames_before(seq, path, offset)
    data = full.data
    if len(data) - offset < FRAME_HEADER.size:
        raise SalvageRefused(f"{path}: offset {offset}: no record header to read")
    _crc, length, _rtype = FRAME_HEADER.unpack_from(data, offset)
    resume = offset + FRAME_HEADER.size + length
    if resume > len(data):
        raise SalvageRefused(f"{path}: offset {offset}: the damaged record's length runs past the end of "
                             "the file (the length itself is damaged)")
    tail: list[Frame] = []
    pos = resume
    while True:
        try:
            got = read_frame(data, pos)
        except RecordFormatError as exc:
            raise SalvageRefused(f"{path}: offset {pos}: {exc}") from None
        if isinstance(got, Frame):
            if got.rtype == RecordType.CHECKPOINT:
                raise SalvageRefused(f"{path}: offset {pos}: a checkpoint in the middle of a segment")
            if got.rtype == RecordType.WATERMARK:
                mark = decode_watermark(got.payload(data))
                if mark.salt != full.salt or mark.offset != pos or mark.durable > pos:
                    raise SalvageRefused(f"{path}: offset {pos}: a watermark that does not belong there")
            tail.append(got)
            pos += got.size
            continue
        if pos == len(data) or data.count(0, pos) == len(data) - pos:
            break
        if pos == resume:
            raise SalvageRefused(f"{path}: offset {offset}: no record where the damaged one ends "
                                 f"(offset {resume}): its length is damaged too, or more is")
        if not is_last or durable_claim_after(data, pos + 1, full.salt) > pos:
            raise SalvageRefused(f"{path}: offset {pos}: a second damaged record ({got})")
        break  # a torn, never-synced tail after the damage: nothing acknowledged is in it
    return _Damaged(full, tail, data)


def _frames_before(seq: int, path: Path, offset: int) -> SegmentScan:
    """The segment with only its verified frames before `offset`, which must be where a frame
    starts that does not verify (the damaged record load reported), after the checkpoint."""
    data = fsutil.read_file(path)
    header = read_header(data, seq, path)
    if isinstance(header, str):
        raise SalvageRefused(f"{path}: the damage hits the segment's header ({header})")
    scan = SegmentScan(seq, path, data=data, salt=header[0], version=header[1])
    pos = FILE_HEADER.size
    while pos < offset:
        try:
            got = read_frame(data, pos)
        except RecordFormatError as exc:
            raise SalvageRefused(f"{path}: offset {pos}: {exc}") from None
        if not isinstance(got, Frame):
            break
        scan.frames.append(got)
        pos += got.size
    if pos != offset or isinstance(read_frame(data, offset), Frame):
        raise SalvageRefused(f"{path}: offset {offset}: not a damaged record after intact ones")
    if not scan.frames or scan.frames[0].rtype != RecordType.CHECKPOINT:
        raise SalvageRefused(f"{path}: the damage hits the segment's checkpoint")
    scan.end = offset
    return scan


def _state_after(damaged: _Damaged, after: list[SegmentScan]) -> tuple[HardState | None, tuple[int, int] | None]:
    """The latest hard state and last log id set by records after the damage (None: not set)."""
    hard: HardState | None = None
    last: tuple[int, int] | None = None
    runs = [(damaged.data, damaged.head.path, damaged.head.version, damaged.tail)]
    runs += [(s.data, s.path, s.version, s.frames) for s in after]
    for data, path, version, frames in runs:
        for frame in frames:  # a checkpoint can only be a later segment's first frame (checked)
            payload = frame.payload(data)
            try:
                if frame.rtype == RecordType.CHECKPOINT:
                    cp = decode_checkpoint(payload, version)
                    hard, last = cp.hard, (cp.last_term, cp.last_index)
                elif frame.rtype == RecordType.HARD_STATE:
                    hard = decode_hard_state(payload)
                elif frame.rtype == RecordType.ENTRY:
                    head = decode_entry_head(payload)
                    last = (head.term, head.index)
                elif frame.rtype == RecordType.SNAPSHOT:
                    record = decode_snapshot(payload)
                    if not record.keep:
                        last = (record.meta.term, record.meta.index)
                    # keep=True moves only the log's start, never its end
            except RecordFormatError as exc:
                raise SalvageRefused(f"{path}: offset {frame.offset}: {exc}") from None
    return hard, last


def _read(index: LogIndex, lo: int, hi: int, paths: list[Path], first_seq: int) -> list[Entry]:
    fds: dict[int, int] = {}

    def lookup(seq: int) -> tuple[int, Path]:
        path = paths[seq - first_seq]
        if seq not in fds:
            fds[seq] = os.open(path, os.O_RDONLY)
        return fds[seq], path
    try:
        return read_entries(index, lo, hi, lookup) if hi > lo else []
    except LogCorruptError as exc:
        raise SalvageRefused(f"the salvaged prefix does not read back: {exc}") from None
    finally:
        for fd in fds.values():
            os.close(fd)


# == quarantine ================================================================================
def quarantine(directory: str | os.PathLike[str], salvaged: Salvaged, *, segment_size: int) -> Path:
    """Move the damaged log folder aside (to `<name>.corrupt-<n>`, never deleted) and put a new
    log holding only `salvaged` in its place; returns where the damaged folder went.

    Crash-safe: the new log is built and synced in `<name>.salvage`, marked complete, and only
    then are the two folders renamed (each rename made durable by a parent fsync). A crash
    before the first rename leaves the damaged log in place (salvage runs again); after it,
    `finish_interrupted()` at the next start completes the second rename. At no point is there
    neither a damaged log nor a complete new one."""
    from zraft.logstore.file_store import FileLogStore  # file_store imports this package's modules

    directory = Path(directory)
    parent = directory.parent
    staging = parent / (directory.name + SALVAGE_SUFFIX)
    if staging.exists():
        shutil.rmtree(staging)  # an earlier attempt that did not finish: derived data only
    with FileLogStore(staging, segment_size=segment_size) as fresh:
        fresh.load()
        if salvaged.snapshot != SnapshotMeta():
            fresh.apply_snapshot(salvaged.snapshot)
        fresh.save(salvaged.hard_state, salvaged.entries, sync=True)
    marker = staging / COMPLETE_MARKER
    with open(marker, "w") as out:
        out.write(f"salvaged from a damaged log, which was moved aside:\n{salvaged.describe()}\n")
        out.flush()
        os.fsync(out.fileno())
    fsutil.fsync_dir(staging)
    fsutil.fsync_dir(parent)
    n = 1
    while (parent / f"{directory.name}.corrupt-{n}").exists():
        n += 1
    aside = parent / f"{directory.name}.corrupt-{n}"
    os.rename(directory, aside)
    fsutil.fsync_dir(parent)
    os.rename(staging, directory)
    fsutil.fsync_dir(parent)
    return aside


def finish_interrupted(directory: str | os.PathLike[str]) -> None:
    """Complete or clean up a quarantine that a crash interrupted; call before opening the log.

    The log folder missing while a complete new one waits beside it: the crash fell between
    the two renames, so finish the second. Anything else left beside it is an unfinished
    build, derived from a damaged log that is still in place: remove it."""
    directory = Path(directory)
    staging = directory.parent / (directory.name + SALVAGE_SUFFIX)
    if not staging.exists():
        return
    if not directory.exists() and (staging / COMPLETE_MARKER).exists():
        log.warning("%s: finishing a salvage interrupted by a crash", directory)
        os.rename(staging, directory)
        fsutil.fsync_dir(directory.parent)
        return
    if not directory.exists():
        raise SalvageRefused(f"{directory} is missing and {staging} is incomplete; refusing to start "
                             "from an empty log (an operator must look)")
    shutil.rmtree(staging)
    fsutil.fsync_dir(directory.parent)
