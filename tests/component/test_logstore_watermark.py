"""Damage in the middle of the last segment: cut or refuse, decided by the durable watermark.

A power cut may write back the pages of an unsynced batch out of order, so a damaged record
can be followed by intact ones that were never synced: load must cut there, or the node
never starts again. Damage to a record that a completed fsync covered must still be refused,
and the WATERMARK records (each batch after a sync starts with one) are what tells the two
apart. Crashes are simulated by keeping the segment bytes as the page cache held them,
before anything is synced at close.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import pytest

from zraft.logstore import FileLogStore, LogCorruptError, fsutil
from zraft.logstore.records import (
    FRAME_HEADER,
    Frame,
    RecordType,
    Watermark,
    decode_watermark,
    encode_entry,
    encode_watermark,
    frame,
    read_frame,
)
from zraft.logstore.segment import FILE_HEADER, MAGIC, durable_claim_after
from zraft.raft.types import Entry, EntryKind, HardState

ENTRY_HEAD = 17  # term, index, kind: the bytes of an entry payload before its data


def ents(lo: int, hi: int, term: int = 1, size: int = 120) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, bytes([(i * 11) % 256]) * size) for i in range(lo, hi)]


def seg_paths(root: Path) -> list[Path]:
    return sorted(root.glob("*.seg"))


def frames_of(data: bytes) -> list[Frame]:
    """Every frame from the checkpoint on, up to the first position that is not one."""
    found, offset = [], FILE_HEADER.size
    while isinstance(frame := read_frame(data, offset), Frame):
        found.append(frame)
        offset += frame.size
    return found


def salt_of(data: bytes) -> int:
    return int(FILE_HEADER.unpack_from(data)[4])


def crash_image(store: FileLogStore, root: Path) -> dict[str, bytes]:
    """The segments as a crash of the process would leave them (page cache included), taken
    before close() syncs the pending tail."""
    image = {p.name: p.read_bytes() for p in seg_paths(root)}
    store.close()
    return image


def write_image(root: Path, image: dict[str, bytes]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for path in seg_paths(root):
        path.unlink()
    for name, data in image.items():
        (root / name).write_bytes(data)


def flip(data: bytes, offset: int, mask: int = 0x04) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def load(root: Path) -> tuple[tuple[Entry, ...], HardState]:
    with FileLogStore(root, preallocate=False) as store:
        state = store.load()
    return state.entries, state.hard_state


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Crashes are simulated by rewriting files, so real flushes only cost time here."""
    monkeypatch.setattr(fsutil, "datasync", lambda fd: None)
    monkeypatch.setattr(fsutil, "fsync_dir", lambda path: None)
    monkeypatch.setattr(os, "fsync", lambda fd: None)


# == one segment: two synced batches, then two unsynced ones ===================================
SYNCED = ents(1, 11)
UNSYNCED = ents(11, 24, size=400)


def build_tail(root: Path) -> tuple[bytes, int]:
    """Segment bytes holding two synced batches and then two unsynced ones (with a hard
    state), and the offset where the unsynced part begins."""
    store = FileLogStore(root, preallocate=False)
    store.load()
    store.save(HardState(1, 1, 2), SYNCED[:5], sync=True)
    store.save(HardState(1, 1, 5), SYNCED[5:], sync=True)
    synced_end = seg_paths(root)[-1].stat().st_size
    store.save(HardState(1, 1, 10), UNSYNCED[:8], sync=False)
    store.save(HardState(2, 1, 12), UNSYNCED[8:], sync=False)
    image = crash_image(store, root)
    assert len(image) == 1
    return image[seg_paths(root)[-1].name], synced_end


def prefix_before(data: bytes, cut: int) -> tuple[tuple[Entry, ...], HardState]:
    """Entries and hard state of the records that end at or before `cut`."""
    entries, hard = [], HardState()
    written = {e.index: e for e in SYNCED + UNSYNCED}
    for frame in frames_of(data)[1:]:
        if frame.offset + frame.size > cut:
            break
        payload = frame.payload(data)
        if frame.rtype == RecordType.ENTRY:
            entries.append(written[struct.unpack_from("<QQ", payload)[1]])
        elif frame.rtype == RecordType.HARD_STATE:
            hard = HardState(*struct.unpack_from("<QQQ", payload))
    return tuple(entries), hard


@pytest.mark.parametrize("damage", ["lost page", "bit flip"])
def test_damaged_middle_of_unsynced_tail_is_cut_there(tmp_path: Path, damage: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Out-of-order write-back: a record in the middle of the unsynced tail is damaged while
    later ones are intact. Load cuts at the damage, every synced entry is there, and the cut
    log takes new writes."""
    data, synced_end = build_tail(tmp_path / "build")
    frames = frames_of(data)
    victim = [f for f in frames if f.rtype == RecordType.ENTRY][-3]  # in the second unsynced batch
    assert any(f.rtype == RecordType.HARD_STATE and f.offset > victim.offset for f in frames)
    if damage == "lost page":
        broken = data[: victim.offset + 20] + bytes(1000) + data[victim.offset + 1020 :]
    else:
        broken = flip(data, victim.offset + 60)
    root = tmp_path / "log"
    write_image(root, {"0000000000000001.seg": broken})
    with caplog.at_level(logging.WARNING, logger="zraft.logstore"):
        entries, hard = load(root)
    assert (entries, hard) == prefix_before(data, victim.offset)
    assert entries[: len(SYNCED)] == tuple(SYNCED) and len(entries) > len(SYNCED)
    assert hard == HardState(1, 1, 10)  # the first unsynced batch's, written before the damage
    assert f"torn tail at offset {victim.offset}" in caplog.text and "out of order" in caplog.text
    assert seg_paths(root)[0].stat().st_size == victim.offset  # cut, durably, at the damage
    nxt = entries[-1].index + 1
    with FileLogStore(root, preallocate=False) as store:
        store.load()
        store.save(None, ents(nxt, nxt + 2, term=2), sync=True)
    assert load(root)[0] == entries + tuple(ents(nxt, nxt + 2, term=2))


def test_each_damaged_record_is_refused_below_the_watermark_and_cut_above_it(
        tmp_path: Path, no_fsync: None) -> None:
    """Every record of the segment in turn gets a flipped bit. Below the durable watermark
    that the unsynced batch recorded (synced data) load must refuse and name the record; at
    or above it (never synced) load returns exactly the records before the damage."""
    data, synced_end = build_tail(tmp_path / "build")
    frames = frames_of(data)[1:]
    marks = [decode_watermark(f.payload(data)) for f in frames if f.rtype == RecordType.WATERMARK]
    assert marks[-1].durable == synced_end  # the first unsynced batch starts with the claim
    root = tmp_path / "log"
    refused = cut = 0
    for frame in frames:
        write_image(root, {"0000000000000001.seg": flip(data, frame.offset + frame.size // 2)})
        if frame.offset < synced_end:
            with pytest.raises(LogCorruptError, match=f"synced up to offset {synced_end}") as info:
                load(root)
            assert info.value.offset == frame.offset
            refused += 1
        else:
            assert load(root) == prefix_before(data, frame.offset), frame
            cut += 1
    assert refused >= 12 and cut >= 14  # two synced batches; the unsynced ones, watermark included


def test_post_sync_damage_in_last_synced_batch_is_refused(tmp_path: Path) -> None:
    """The newest synced batch has no synced record after it: only the watermark at the
    start of the next (unsynced) batch proves it was synced, and that is enough."""
    data, synced_end = build_tail(tmp_path / "build")
    last_synced = [f for f in frames_of(data) if f.offset + f.size <= synced_end][-3]
    assert last_synced.rtype == RecordType.ENTRY and last_synced.offset > synced_end - 600
    write_image(tmp_path / "log", {"0000000000000001.seg": flip(data, last_synced.offset + 30)})
    with pytest.raises(LogCorruptError, match="in synced data") as info:
        load(tmp_path / "log")
    assert info.value.offset == last_synced.offset


def test_damage_in_older_segment_is_refused_even_above_its_watermarks(tmp_path: Path) -> None:
    """An older segment was synced in full (sealed) before the next one was created, so no
    damage in it is a torn write, even in a batch that no watermark covers."""
    root = tmp_path / "build"
    store = FileLogStore(root, segment_size=4096, preallocate=False)
    store.load()
    store.save(HardState(1, 1, 1), ents(1, 4), sync=True)
    store.save(None, ents(4, 20), sync=False)  # unsynced until the rollover seals it
    store.save(HardState(1, 1, 15), ents(20, 40), sync=True)  # rolls over
    image = crash_image(store, root)
    assert len(image) == 2
    first = min(image)
    data = image[first]
    victim = [f for f in frames_of(data) if f.rtype == RecordType.ENTRY][8]  # entry 9: unsynced batch
    assert durable_claim_after(data, victim.offset + 1, salt_of(data)) <= victim.offset
    image[first] = flip(data, victim.offset + 40)
    write_image(tmp_path / "log", image)
    with pytest.raises(LogCorruptError, match="not the last segment") as info:
        load(tmp_path / "log")
    assert info.value.offset == victim.offset and info.value.path.endswith(first)


@pytest.mark.parametrize("forged", ["wrong salt", "wrong offset", "claims past itself", "genuine"])
def test_only_the_writers_own_watermarks_are_trusted(tmp_path: Path, forged: str) -> None:
    """Entry data is arbitrary client bytes and may contain what looks like a watermark; it
    proves nothing unless it carries this segment's salt and its own true offset (and a claim
    that does not reach past itself). The "genuine" case shows such a record would be obeyed."""
    root = tmp_path / "build"
    store = FileLogStore(root, preallocate=False)
    store.load()
    store.save(HardState(1, 1, 1), ents(1, 5), sync=True)
    seg = seg_paths(root)[-1]
    salt, tail = salt_of(seg.read_bytes()), seg.stat().st_size
    victim, carrier = ents(5, 6)[0], ents(6, 7)[0]
    where = tail + len(encode_watermark(0, 0, 0)) + len(encode_entry(victim))
    at = where + FRAME_HEADER.size + ENTRY_HEAD + 10  # ten bytes into the carrier's data
    mark = {"wrong salt": Watermark(salt ^ 1, at, at), "wrong offset": Watermark(salt, at + 1, at),
            "claims past itself": Watermark(salt, at, at + 1), "genuine": Watermark(salt, at, at)}[forged]
    data = b"x" * 10 + encode_watermark(mark.salt, mark.offset, mark.durable) + b"y" * 10
    store.save(None, [victim, Entry(1, 6, EntryKind.NORMAL, data), *ents(7, 9)], sync=False)
    image = crash_image(store, root)
    segment = image[seg.name]
    assert segment[at : at + 9] == encode_watermark(mark.salt, mark.offset, mark.durable)[:9]
    image[seg.name] = flip(segment, where - 30)  # inside the victim, entry 5
    write_image(tmp_path / "log", image)
    if forged == "genuine":
        with pytest.raises(LogCorruptError, match=f"synced up to offset {at}"):
            load(tmp_path / "log")
    else:
        assert load(tmp_path / "log") == (tuple(ents(1, 5)), HardState(1, 1, 1))


def test_watermark_is_written_once_per_completed_sync(tmp_path: Path) -> None:
    """One small record per batch that follows a sync, none while nothing new was synced,
    and each tells exactly where the last completed sync ended."""
    store = FileLogStore(tmp_path, preallocate=False)
    store.load()
    seg = seg_paths(tmp_path)[-1]
    sizes = [seg.stat().st_size]
    for k, sync in enumerate([True, True, False, False, True, False]):
        store.save(None, ents(k + 1, k + 2), sync=sync)
        sizes.append(seg.stat().st_size)
    store.close()
    data = seg.read_bytes()
    marks = [(f.offset, decode_watermark(f.payload(data)).durable)
             for f in frames_of(data) if f.rtype == RecordType.WATERMARK]
    # the first batch follows only the checkpoint (synced at creation): no watermark needed
    assert marks == [(sizes[1], sizes[1]), (sizes[2], sizes[2]), (sizes[5], sizes[5])]


def test_restart_makes_what_it_loaded_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What load returned may have been in the page cache only (the process died, the
    machine did not); the first watermark after a restart claims it, so load fsyncs it."""
    store = FileLogStore(tmp_path, preallocate=False)
    store.load()
    store.save(None, ents(1, 3), sync=False)
    crash_image(store, tmp_path)
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with FileLogStore(tmp_path, preallocate=False) as again:
        again.load()
        assert synced, "load did not fsync the segment it will append to"


def test_segments_of_an_older_format_are_refused_clearly(tmp_path: Path) -> None:
    head = struct.pack("<8sHHQ", MAGIC, 1, 0, 1)
    (tmp_path / "0000000000000001.seg").write_bytes(head + struct.pack("<I", zlib.crc32(head)) + bytes(64))
    with pytest.raises(LogCorruptError, match="format version 1"):
        FileLogStore(tmp_path).load()
    assert (tmp_path / "0000000000000001.seg").exists()  # not mistaken for a torn creation


def test_watermark_encoding_is_a_plain_frame() -> None:
    """The inlined encoder on the write path writes exactly what the generic framing would."""
    encoded = encode_watermark(2**64 - 1, 12345, 678)
    assert encoded == frame(RecordType.WATERMARK, struct.pack("<QQQ", 2**64 - 1, 12345, 678))
    found = read_frame(encoded, 0)
    assert isinstance(found, Frame) and found.rtype == RecordType.WATERMARK
    assert decode_watermark(found.payload(encoded)) == Watermark(2**64 - 1, 12345, 678)
