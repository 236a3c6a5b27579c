"""FileLogStore: the durable Raft log, as segment files in one directory.

Every mutation is an append of framed records to the last segment (see DESIGN.md):
overwrites, hard-state changes and snapshots are records too, so a save() is one pwrite and,
when asked, one fdatasync, whatever the batch holds.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from zraft.logstore import fsutil, rules
from zraft.logstore.errors import LogFailedError, LogStoreError
from zraft.logstore.index import LogIndex
from zraft.logstore.reader import read_entries
from zraft.logstore.records import (
    Checkpoint,
    encode_checkpoint,
    encode_entry,
    encode_hard_state,
    encode_snapshot,
)
from zraft.logstore.recovery import SegmentInfo, recover
from zraft.logstore.segment import SegmentWriter
from zraft.raft.types import ConfState, Entry, EntryKind, HardState, InitialState, SnapshotMeta

DEFAULT_SEGMENT_SIZE = 64 << 20


@dataclass(slots=True)
class _Open:
    """Everything that exists only while the store is open and recovered."""

    index: LogIndex
    segments: list[SegmentInfo]
    writer: SegmentWriter
    readers: dict[int, int] = field(default_factory=dict)
    unsynced: bool = False


class FileLogStore:
    """Durable LogStore. Single-threaded: the raft process owns it; nothing locks."""

    def __init__(self, directory: str | os.PathLike[str], *, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 preallocate: bool = True) -> None:
        """Cheap: the directory is first touched by load() (or any other call)."""
        if segment_size <= 0:
            raise ValueError(f"segment_size must be positive, got {segment_size}")
        self._dir = Path(directory)
        self._segment_size = segment_size
        self._prealloc = segment_size if preallocate else 0
        self._state: _Open | None = None
        self._failed: BaseException | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def load(self) -> InitialState:
        st = self._open()
        idx = st.index
        entries = self._read(st, idx.first_index(), idx.last_index() + 1)
        return InitialState(hard_state=idx.hard, snapshot=idx.snap, entries=tuple(entries))

    def close(self) -> None:
        """Release file descriptors; pending unsynced writes are synced first (best effort)."""
        st, self._state, self._closed = self._state, None, True
        if st is None:
            return
        try:
            if st.unsynced and self._failed is None:
                st.writer.sync()
        finally:
            for fd in (st.writer.fd, *st.readers.values()):
                os.close(fd)

    def reopen(self) -> None:
        """Forget an earlier failure (a full disk, most often) without losing anything durable.

        Every byte written after the last successful sync is cut off (a partial batch, or pages
        a failed fsync may have dropped while the page cache still shows them), the files are
        closed, and the next call recovers from the disk exactly as a restart would. Raises
        OSError if even the cut fails; the store then stays failed."""
        if self._closed:
            raise LogStoreError(f"log store {self._dir} is closed")
        st, self._state = self._state, None
        if st is not None:
            try:
                st.writer.drop_unsynced()
            except BaseException as exc:
                self._failed = exc
                raise
            finally:
                for fd in (st.writer.fd, *st.readers.values()):
                    os.close(fd)
        self._failed = None

    def __enter__(self) -> FileLogStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------------
    def entries(self, lo: int, hi: int) -> list[Entry]:
        st = self._open()
        rules.check_range(st.index.first_index(), st.index.last_index(), lo, hi)
        return self._read(st, lo, hi)

    def term(self, index: int) -> int | None:
        return self._open().index.term(index)

    def first_index(self) -> int:
        return self._open().index.first_index()

    def last_index(self) -> int:
        return self._open().index.last_index()

    def hard_state(self) -> HardState:
        return self._open().index.hard

    def snapshot_meta(self) -> SnapshotMeta:
        return self._open().index.snap

    # -- writes ----------------------------------------------------------------------------
    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool) -> None:
        st = self._open()
        rules.check_append(st.index.snap.index, st.index.last_index(), entries)
        if hard_state == st.index.hard:
            hard_state = None
        with self._guard():
            if entries or hard_state is not None:
                self._append_batch(st, hard_state, entries)
            if sync and st.unsynced:
                st.writer.sync()
                st.unsynced = False

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        st = self._open()
        if meta.index < st.index.snap.index or meta == st.index.snap:
            return  # stale or repeated: the log already starts at or after it
        self._write_snapshot(st, meta, keep=st.index.term(meta.index) == meta.term)

    def compact(self, index: int, meta: SnapshotMeta | None = None) -> SnapshotMeta:
        st = self._open()
        idx = st.index
        if index <= idx.snap.index:
            with self._guard():
                self._delete_old_segments(st)
            return idx.snap
        rules.check_compact(index, idx.last_index())
        term = idx.term(index)
        assert term is not None
        if meta is None:
            meta = SnapshotMeta(index, term, self._conf_at(st, index))
        elif (meta.index, meta.term) != (index, term):
            raise ValueError(f"snapshot meta {meta} does not match entry {index} of term {term}")
        self._write_snapshot(st, meta, keep=True)
        return meta

    # -- internals -------------------------------------------------------------------------
    def _open(self) -> _Open:
        if self._closed:
            raise LogStoreError(f"log store {self._dir} is closed")
        if self._failed is not None:
            raise LogFailedError(f"log store {self._dir} failed earlier; reopen it") from self._failed
        if self._state is None:
            self._state = self._recover()
        return self._state

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Any failure while writing leaves the disk in an unknown state (a failed fsync
        may even have dropped dirty pages), so the store stops until reopened."""
        try:
            yield
        except BaseException as exc:
            self._failed = exc
            raise

    def _recover(self) -> _Open:
        self._make_dir()
        found = recover(self._dir)
        if found is None:
            index = LogIndex(HardState(), SnapshotMeta(), 0)
            checkpoint = encode_checkpoint(_checkpoint_of(index))
            writer = SegmentWriter.create(self._dir, 1, checkpoint, self._prealloc)
            return _Open(index, [SegmentInfo(1, writer.path, 0)], writer)
        writer = SegmentWriter.reopen(found.last_scan, self._prealloc)
        return _Open(found.index, found.segments, writer)

    def _make_dir(self) -> None:
        if not self._dir.is_dir():
            self._dir.mkdir(parents=True, exist_ok=True)
            fsutil.fsync_dir(self._dir.parent)

    def _append_batch(self, st: _Open, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        records = [encode_entry(e) for e in entries]
        if hard_state is not None:
            records.append(encode_hard_state(hard_state))
        offset = self._append(st, records)
        if entries:
            sizes = [len(r) for r in records[: len(entries)]]
            offsets = list(itertools.accumulate(sizes[:-1], initial=offset))
            confs = [e.index for e in entries if e.kind == EntryKind.CONF]
            terms = [e.term for e in entries]
            st.index.append_batch(entries[0].index, terms, confs, st.writer.seq, offsets, sizes)
        if hard_state is not None:
            st.index.hard = hard_state

    def _append(self, st: _Open, records: Sequence[bytes]) -> int:
        """Write at the tail, first starting a new segment if this one is full; returns the
        offset of the first record (the writer may put a watermark before it)."""
        size = st.writer.overhead() + sum(map(len, records))
        if st.writer.has_records() and st.writer.tail + size > self._segment_size:
            self._rollover(st)
        st.unsynced = True
        return st.writer.append(records)

    def _rollover(self, st: _Open) -> None:
        old = st.writer
        old.seal()
        st.unsynced = False
        checkpoint = _checkpoint_of(st.index)
        encoded = encode_checkpoint(checkpoint)
        st.writer = SegmentWriter.create(self._dir, old.seq + 1, encoded, self._prealloc)
        st.readers[old.seq] = old.fd
        st.segments.append(SegmentInfo(st.writer.seq, st.writer.path, checkpoint.last_index))

    def _write_snapshot(self, st: _Open, meta: SnapshotMeta, keep: bool) -> None:
        """Snapshots are rare and let segments be deleted, so they are always synced before
        anything is deleted: a deletion must never outrun the record that justifies it."""
        with self._guard():
            self._append(st, [encode_snapshot(meta, keep)])
            st.writer.sync()
            st.unsynced = False
            st.index.install_snapshot(meta, keep)
            self._delete_old_segments(st)

    def _delete_old_segments(self, st: _Open) -> None:
        """Drop the oldest segments while the next one's checkpoint shows that everything
        they hold is at or below the snapshot."""
        deleted = False
        while len(st.segments) >= 2 and st.segments[1].checkpoint_last <= st.index.snap.index:
            info = st.segments.pop(0)
            fd = st.readers.pop(info.seq, None)
            if fd is not None:
                os.close(fd)
            os.unlink(info.path)
            deleted = True
        if deleted:
            fsutil.fsync_dir(self._dir)

    def _read(self, st: _Open, lo: int, hi: int) -> list[Entry]:
        return read_entries(st.index, lo, hi, lambda seq: self._reader(st, seq))

    def _reader(self, st: _Open, seq: int) -> tuple[int, Path]:
        if seq == st.writer.seq:
            return st.writer.fd, st.writer.path
        path = st.segments[seq - st.segments[0].seq].path
        if seq not in st.readers:
            st.readers[seq] = os.open(path, os.O_RDONLY)
        return st.readers[seq], path

    def _conf_at(self, st: _Open, index: int) -> ConfState:
        """Configuration in force at `index`: the latest CONF entry at or before it."""
        confs = st.index.conf_indexes
        k = bisect.bisect_right(confs, index)
        if k == 0:
            return st.index.snap.conf
        return ConfState.decode(self._read(st, confs[k - 1], confs[k - 1] + 1)[0].data)


def _checkpoint_of(index: LogIndex) -> Checkpoint:
    last = index.last_index()
    term = index.term(last)
    assert term is not None, "live index always knows its last term"
    return Checkpoint(index.hard, index.snap, last, term)
