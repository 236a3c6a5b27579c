"""The skeleton both synchronous process shells (raft, store) are built on.

What every such shell needs, written once:
- `Counters`: named counters, with a warning at the 1st, 2nd, 4th, 8th... occurrence of a bad
  input, so that dropping is visible in the log but can never flood it;
- `drain`: take at most `limit` waiting messages from a socket without blocking, decode each
  or count and drop it (the sender may be anyone: a peer, a stale client, a bug);
- `RpcServer`: a ROUTER whose requests are dispatched through a table by message type. A
  handler returns its reply, or None when it parks the request and answers later through
  `reply`; replies of the `held` types wait for `release_held` (the raft shell holds
  Proposed until this turn's AppendEntries are out). A reply that cannot be sent (the
  requester is gone, or not reading) is counted, never blocks;
- `ExitCode`, `install_signal_handlers` and `run_shell`: SIGTERM and SIGINT end the loop at
  the next turn; 0 after a clean stop, 1 after a fatal error (so that supervisord or systemd
  restarts the process), 2 for a configuration that cannot work.

Rules: nothing here knows Raft or SQLite; one thread owns every socket; sends never block.
"""

from __future__ import annotations

import cProfile
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Any, Protocol

import zmq

from zraft.transport.sockets import recv_batch, send_nowait
from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import Error, ErrorCode, WireMessage

MAX_DRAIN = 1024
"""Messages taken from one socket in one turn; the rest wait for the next turn, so one busy
socket cannot starve the others or the timers."""


class ExitCode(IntEnum):
    OK = 0
    """Stopped on SIGTERM or SIGINT: the supervisor must not restart it."""
    FATAL = 1
    """A failed start or a broken invariant: the supervisor restarts the process."""
    CONFIG = 2
    """The configuration or command line cannot work; a restart would not help."""


class Counters(Counter[str]):
    """A process's counters, reported in its status."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__()
        self._log = log

    def bad(self, counter: str, detail: str) -> None:
        """Count one dropped input; log it at the 1st, 2nd, 4th, 8th... time."""
        self[counter] += 1
        count = self[counter]
        if count & (count - 1) == 0:
            self._log.warning("dropped %s (%s #%d)", detail, counter, count)


def drain(sock: zmq.Socket[bytes], limit: int, handle: Callable[[Any], None], stats: Counters,
          counter: str) -> bool:
    """Decode and handle up to `limit` messages waiting on a DEALER or SUB socket; count and
    drop what does not decode. True when the socket was emptied."""
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return True
        try:
            msg = decode(frames)
        except RemoteProtocolError as exc:
            stats.bad(counter, f"an undecodable message: {exc}")
            continue
        handle(msg)
    return False


Handler = Callable[[bytes, Any], WireMessage | None]
"""(requester identity, request) -> the reply now, or None when the request is parked."""


class RpcServer:
    """A ROUTER serving local requests through a dispatch table. Owned by the loop thread."""

    def __init__(self, sock: zmq.Socket[bytes], handlers: Mapping[type[WireMessage], Handler],
                 stats: Counters, service: str, prefix: str = "rpc",
                 held: Iterable[type[WireMessage]] = ()) -> None:
        """`service` names the process in refusals ("not a raft request"); `prefix` starts
        the names of the counters."""
        self.sock = sock
        self._handlers = dict(handlers)
        self._stats = stats
        self._service = service
        self._prefix = prefix
        self._held_types = tuple(held)
        self._held: list[tuple[bytes, WireMessage]] = []

    def drain(self, limit: int = MAX_DRAIN) -> None:
        """Serve up to `limit` waiting requests. What does not decode is counted and dropped; a
        decodable message that is not a request here gets a bad_request answer."""
        for frames in recv_batch(self.sock, limit):
            if len(frames) < 2:
                self._stats.bad(f"{self._prefix}_decode_errors", "a request without a body")
                continue
            identity = frames[0]
            try:
                request = decode(frames[1:])
            except RemoteProtocolError as exc:
                self._stats.bad(f"{self._prefix}_decode_errors", f"an undecodable request: {exc}")
                continue
            self._stats[f"{self._prefix}_received"] += 1
            handler = self._handlers.get(type(request)) if isinstance(request, WireMessage) else None
            if handler is None:
                self._refuse(identity, request)
                continue
            reply = handler(identity, request)
            if reply is None:
                continue
            if isinstance(reply, self._held_types):
                self._held.append((identity, reply))
            else:
                self.reply(identity, reply)

    def _refuse(self, identity: bytes, request: object) -> None:
        self._stats.bad(f"{self._prefix}_bad_requests", f"an unexpected {type(request).__name__}")
        request_id = getattr(request, "id", None)
        if isinstance(request_id, int):
            self.reply(identity, Error(request_id, ErrorCode.BAD_REQUEST, f"not a {self._service} request"))

    def reply(self, identity: bytes, reply: WireMessage) -> bool:
        """Send `reply` to `identity` without blocking; False (and counted) when dropped."""
        return self.reply_frames(identity, encode(reply))

    def reply_frames(self, identity: bytes, frames: list[bytes]) -> bool:
        """As `reply`, for a reply already encoded (by a worker thread, say)."""
        if send_nowait(self.sock, [identity, *frames]):
            return True
        self._stats[f"{self._prefix}_reply_dropped"] += 1
        return False

    def release_held(self) -> None:
        """Send the replies held back since the last call, in order."""
        held, self._held = self._held, []
        for identity, reply in held:
            self.reply(identity, reply)

    @property
    def holding(self) -> bool:
        return bool(self._held)


class Ticker:
    """Logical ticks for the Raft core from the monotonic clock: `due(now)` says how many to
    run now. A loop that fell behind (a stalled process, a suspended VM) runs at most
    `max_burst` at once and skips the rest, counted: a burst of ticks would time out every
    election and heartbeat at once, while time spent stalled proves nothing about peers."""

    def __init__(self, tick_s: float, max_burst: int, now: float, stats: Counters, log: logging.Logger) -> None:
        self.tick_s = tick_s
        self.next_at = now + tick_s
        self._max_burst = max_burst
        self._stats = stats
        self._log = log

    def due(self, now: float) -> int:
        ticks = 0
        while now >= self.next_at:
            if ticks >= self._max_burst:
                self._stats["ticks_skipped"] += 1
                self._log.warning("loop fell behind by %.0f ms; skipping ticks", (now - self.next_at) * 1000)
                self.next_at = now + self.tick_s
                break
            ticks += 1
            self.next_at += self.tick_s
        return ticks

    def pause_until(self, when: float) -> None:
        """No tick before `when` (and then one tick later)."""
        self.next_at = when + self.tick_s


# == lifecycle =================================================================================
def install_signal_handlers(stop: Callable[[], None]) -> Callable[[], None]:
    """SIGTERM and SIGINT call `stop`; returns a function restoring the previous handlers.
    Outside the main thread (where signals cannot be handled) this does nothing."""
    def handler(signum: int, frame: object) -> None:
        stop()

    previous: dict[int, Any] = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:
        pass

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return restore


def profiled(serve: Callable[[], None], node_id: int, name: str) -> None:
    """Run `serve`, under cProfile when ZRAFT_PROFILE names a folder (a performance aid: the
    stats go to FOLDER/NAME-NODE-PID.prof when the process stops cleanly)."""
    folder = os.environ.get("ZRAFT_PROFILE")
    if not folder:
        serve()
        return
    profile = cProfile.Profile()
    try:
        profile.runcall(serve)
    finally:
        profile.dump_stats(os.path.join(folder, f"{name}-{node_id}-{os.getpid()}.prof"))


MMAP_THRESHOLD_BYTES = 4 << 20
TRIM_INTERVAL_S = 1.0
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def bound_heap(trim_interval_s: float = TRIM_INTERVAL_S) -> bool:
    """Keep a process's resident memory near what it uses, without paying for it per buffer.

    Left to itself glibc raises its mmap threshold after the first large free, so large
    buffers come from the heap, which fragments: after a 1 GB load, followers' raft processes
    kept 345-365 MB resident for 50 MB of live entries. Fixing the threshold at 128 KiB fixed
    that (58-86 MB) but made every buffer of a megabyte (each image chunk, each load entry) a
    fresh mapping whose pages fault in zeroed: 1 GB through one zmq hop cost 2.1 s of CPU
    instead of 1.0 s, and a raft process relaying an image was CPU-bound. So the threshold is
    fixed at 4 MiB instead (buffers below it are reused from the heap; a fixed value also stops
    glibc raising it), and a daemon thread returns the heap's free pages to the system every
    `trim_interval_s` (malloc_trim, which also releases free pages inside the heap, not only
    at its top). Whether it took (False off glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
            return False
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False

    def trim_forever() -> None:
        while True:
            time.sleep(trim_interval_s)
            trim(0)
    threading.Thread(target=trim_forever, name="malloc-trim", daemon=True).start()
    return True


def setup_logging(name: str, node_id: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {name}[{node_id}] %(message)s")


class Serving(Protocol):
    """What `run_shell` drives: a loop that runs until `stop()` and then closes."""

    def serve(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


def run_shell(process: Serving, node_id: int, name: str, log: logging.Logger,
              fatal: tuple[type[BaseException], ...] = ()) -> ExitCode:
    """Serve `process` until SIGTERM or SIGINT, then close it; the exit code. An exception
    of the `fatal` types is logged as a broken invariant, any other as an unexpected error;
    both end the process with FATAL so that the supervisor restarts it."""
    restore = install_signal_handlers(process.stop)
    code = ExitCode.FATAL
    try:
        profiled(process.serve, node_id, name)
        code = ExitCode.OK
    except fatal as exc:
        log.critical("fatal: %s: %s", type(exc).__name__, exc)
    except Exception:
        log.exception("fatal: unexpected error")
    finally:
        restore()
        try:
            process.close()
        except Exception as exc:
            log.error("error while closing: %s: %s", type(exc).__name__, exc)
            if code == ExitCode.OK:
                code = ExitCode.FATAL
    return code
