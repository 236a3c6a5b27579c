"""Load-time recovery: scan every segment, replay its records into a LogIndex, repair a torn
tail. Nothing on disk is modified until the whole log has been verified, so a corrupt log
is reported exactly as found.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from zraft.logstore import fsutil
from zraft.logstore.errors import LogCorruptError
from zraft.logstore.index import Location, LogIndex, LogOrderError
from zraft.logstore.records import (
    Checkpoint,
    Frame,
    RecordFormatError,
    RecordType,
    decode_checkpoint,
    decode_entry_head,
    decode_hard_state,
    decode_snapshot,
)
from zraft.logstore.segment import SegmentScan, list_segments, scan_segment
from zraft.raft.types import EntryKind

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SegmentInfo:
    """A live segment: `checkpoint_last` is the last log index when it was started, i.e.
    every entry of older segments is <= it — the test for deleting those older segments."""

    seq: int
    path: Path
    checkpoint_last: int


@dataclass(slots=True)
class Recovered:
    index: LogIndex
    segments: list[SegmentInfo]
    last_scan: SegmentScan


def recover(directory: Path) -> Recovered | None:
    """The verified log in `directory`, or None if it holds no segment yet."""
    scans = _scan_all(directory)
    kept = [scan for scan in scans if not scan.discard]
    replayed = replay_all(kept) if kept else None
    for scan in scans:
        if scan.discard:
            _discard(scan)
    if replayed is None:
        return None
    index, infos = replayed
    last = kept[-1]
    if last.torn_at is not None:
        log.warning("%s: torn tail at offset %d (%s): dropping %d bytes, none known to be synced",
                    last.path, last.torn_at, last.torn_reason, len(last.data) - last.end)
    return Recovered(index, infos, last)


def _scan_all(directory: Path) -> list[SegmentScan]:
    found = list_segments(directory)
    for (prev, _), (seq, path) in zip(found, found[1:]):
        if seq != prev + 1:
            raise LogCorruptError(path, 0, f"segment {prev + 1} is missing before {seq}")
    return [scan_segment(seq, path, is_last=k == len(found) - 1) for k, (seq, path) in enumerate(found)]


def _discard(scan: SegmentScan) -> None:
    """A last segment whose creation was torn holds nothing acknowledged: remove it."""
    log.warning("%s: incomplete new segment (%s): removing it", scan.path, scan.torn_reason)
    os.unlink(scan.path)
    fsutil.fsync_dir(scan.path.parent)


def replay_all(scans: list[SegmentScan]) -> tuple[LogIndex, list[SegmentInfo]]:
    """Replay verified segments, oldest first, into a LogIndex (also used by salvage, on the
    part of a damaged log that comes before the damage)."""
    first = scans[0]
    cp = _checkpoint(first)
    index = LogIndex(cp.hard, cp.snap, cp.last_index)
    infos = []
    for scan in scans:
        cp = _checkpoint(scan)
        _check_continuity(scan, cp, index)
        infos.append(SegmentInfo(scan.seq, scan.path, cp.last_index))
        for frame in scan.frames[1:]:
            _replay_frame(scan, frame, index)
    if not index.complete():
        raise LogCorruptError(first.path, 0, f"entries {index.first_index()}..{index.known_from - 1} "
                              "are missing: an older segment was lost")
    return index, infos


def _checkpoint(scan: SegmentScan) -> Checkpoint:
    frame = scan.frames[0]
    try:
        return decode_checkpoint(frame.payload(scan.data), scan.version)
    except RecordFormatError as exc:
        raise LogCorruptError(scan.path, frame.offset, str(exc)) from None


def _check_continuity(scan: SegmentScan, cp: Checkpoint, index: LogIndex) -> None:
    """A segment must start exactly where the previous one ended: this catches records
    lost from the end of a middle segment, which framing alone cannot see."""
    term = index.term(index.last_index())
    state = (index.hard, index.snap, index.last_index())
    if state != (cp.hard, cp.snap, cp.last_index) or term not in (None, cp.last_term):
        raise LogCorruptError(scan.path, scan.frames[0].offset,
                              f"checkpoint {cp} does not match the log before it "
                              f"(hard={index.hard}, snap={index.snap}, last={index.last_index()})")


def _replay_frame(scan: SegmentScan, frame: Frame, index: LogIndex) -> None:
    payload = frame.payload(scan.data)
    try:
        if frame.rtype == RecordType.ENTRY:
            head = decode_entry_head(payload)
            where = Location(scan.seq, frame.offset, frame.size)
            index.append(head.index, head.term, head.kind == EntryKind.CONF, where)
        elif frame.rtype == RecordType.HARD_STATE:
            index.hard = decode_hard_state(payload)
        elif frame.rtype == RecordType.SNAPSHOT:
            record = decode_snapshot(payload)
            index.install_snapshot(record.meta, record.keep)
        elif frame.rtype == RecordType.WATERMARK:
            pass  # only recovery's torn-or-corrupt decision reads it, and scanning checked it
        else:
            raise RecordFormatError("checkpoint record in the middle of a segment")
    except (RecordFormatError, LogOrderError) as exc:
        raise LogCorruptError(scan.path, frame.offset, str(exc)) from None
