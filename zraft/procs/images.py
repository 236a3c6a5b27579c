"""The store's two ends of a snapshot transfer (zraft/procs/DESIGN.md, "Snapshots and compaction").

- **Exports** (on the node that serves a lagging follower): an ExportRead from the raft process
  reads bytes of an `image.Export` of the live database. One export per transfer session,
  opened by a read at offset 0; at most MAX_EXPORTS at once (the oldest goes), each closed
  when its last byte is read or after EXPORT_IDLE_S without a read, since an export holds a
  read transaction that keeps the WAL from being reset.
- **The incoming image** (on the lagging follower): ImageWrite chunks go into one
  `image.Receiver` in a staging folder beside the database; when all bytes are in, the image
  is verified and handed to `swap`, which installs it (the store closes its connections
  first). Every answer says how many bytes are kept, so the puller resumes there; 0 means
  start again (a new session, or an image that failed its checks).

Owned by the store process's loop thread. Installing blocks that loop for as long as the
install takes (a rename after a verification): the node is far behind and serves nothing
that the install would not replace.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from zraft.procs.shell import Counters
from zraft.store.image import Export, ImageError, Received, Receiver, open_export
from zraft.wire.messages import Error, ErrorCode, ExportChunk, ExportRead, ImageWrite, ImageWritten

log = logging.getLogger("zraft.store")

MAX_EXPORTS = 2
"""Transfers served at once; a third session closes the oldest (its puller starts again)."""
EXPORT_IDLE_S = 30.0
"""An export nobody read for this long is closed."""
MAX_CHUNK_BYTES = 4 << 20
"""The most one read returns, whatever the request asks (a reply must stay far below the caps)."""
STAGING = "snapshot-incoming"


class ImageService:
    """Exports for pullers and the one incoming image; see the module docstring."""

    def __init__(self, db_path: Path, swap: Callable[[Received], int], stats: Counters,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._db_path = db_path
        self._staging = db_path.parent / STAGING
        self._swap = swap
        self._stats = stats
        self._clock = clock
        self._exports: OrderedDict[int, tuple[Export, float]] = OrderedDict()
        self._receiver: Receiver | None = None
        self._session = 0
        shutil.rmtree(self._staging, ignore_errors=True)  # a transfer cut short by a restart

    def close(self) -> None:
        for export, _ in self._exports.values():
            export.close()
        self._exports.clear()
        self._drop_receiver()

    # == exports ===============================================================================
    def read(self, req: ExportRead) -> ExportChunk | Error:
        """Bytes of session `req.session` from `req.offset`; size 0 when the session is not
        open here and the read does not start it (the puller then starts again from 0)."""
        now = self._clock()
        self.expire(now)
        entry = self._exports.get(req.session)
        if entry is None:
            if req.offset != 0:
                self._stats["export_unknown"] += 1
                return ExportChunk(req.id, req.session, req.offset, 0, 0, b"")
            try:
                export = open_export(self._db_path)
            except (ImageError, OSError) as exc:
                self._stats["export_errors"] += 1
                return Error(req.id, ErrorCode.UNAVAILABLE, f"cannot export the database: {exc}")
            self._stats["exports_opened"] += 1
            while len(self._exports) >= MAX_EXPORTS:
                _, (oldest, _) = self._exports.popitem(last=False)
                oldest.close()
        else:
            export = entry[0]
        try:
            data = export.read(req.offset, max(0, min(req.max_bytes, MAX_CHUNK_BYTES)))
        except (ImageError, OSError) as exc:
            export.close()
            self._exports.pop(req.session, None)
            self._stats["export_errors"] += 1
            return Error(req.id, ErrorCode.UNAVAILABLE, f"export failed: {exc}")
        self._stats["export_bytes"] += len(data)
        if req.offset + len(data) >= export.size:
            export.close()
            self._exports.pop(req.session, None)
        else:
            self._exports[req.session] = (export, now)
            self._exports.move_to_end(req.session)
        return ExportChunk(req.id, req.session, req.offset, export.size, export.applied_index, data)

    def expire(self, now: float) -> None:
        for session, (export, used) in list(self._exports.items()):
            if now - used > EXPORT_IDLE_S:
                export.close()
                del self._exports[session]
                self._stats["exports_expired"] += 1

    # == the incoming image ====================================================================
    def write(self, req: ImageWrite) -> ImageWritten:
        """Keep a chunk; install the image once all `req.size` bytes are in."""
        if req.session != self._session or self._receiver is None:
            if req.offset != 0:
                return ImageWritten(req.id, req.session, 0, 0)
            self._drop_receiver()
            self._receiver = Receiver(self._staging)
            self._session = req.session
            log.info("receiving a snapshot image of %d bytes (session %d)", req.size, req.session)
        receiver = self._receiver
        try:
            receiver.write(req.offset, req.data)
        except ImageError as exc:
            self._stats["image_refused_writes"] += 1
            log.warning("snapshot image chunk at %d refused: %s", req.offset, exc)
            if receiver.header is None and receiver.received == 0:
                self._drop_receiver()
            return ImageWritten(req.id, req.session, receiver.received if self._receiver else 0, 0)
        if req.size <= 0 or receiver.received < req.size:
            return ImageWritten(req.id, req.session, receiver.received, 0)
        return ImageWritten(req.id, req.session, req.size, self._install(receiver))

    def _install(self, receiver: Receiver) -> int:
        """Verify and swap in a complete image; its applied index, or 0 (start again)."""
        self._receiver = None
        started = self._clock()
        for export, _ in self._exports.values():  # their read transactions would keep the WAL busy
            export.close()
        self._exports.clear()
        try:
            received = receiver.finish()
            self._swap(received)
        except (ImageError, OSError) as exc:
            receiver.abort()
            self._stats["image_failed"] += 1
            log.error("snapshot image not installed: %s", exc)
            return 0
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._stats["images_installed"] += 1
        log.info("installed a snapshot image at applied index %d (%d bytes) in %.2f s",
                 received.applied_index, received.bytes, self._clock() - started)
        return received.applied_index

    def _drop_receiver(self) -> None:
        if self._receiver is not None:
            self._receiver.abort()
            self._receiver = None
        shutil.rmtree(self._staging, ignore_errors=True)
