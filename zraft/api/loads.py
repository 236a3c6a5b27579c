"""Bulk loads of a SQLite file of any size: rqlite's `/db/load` of a file, and `/boot`.

The file travels through the Raft log in chunks (zraft/store/loading.py says how every node
stages and swaps it). Chosen over installing it as a snapshot because the log already gives
everything a load needs: an order against other writes, durability on a majority before the
client hears "ok", catch-up for nodes that were down (including by image, which carries the
staged chunks), and the same outcome on every node. A snapshot install would need a second
path for all of that. The price is that the file is written about three times on each node
(log, staging, database); the log's copy goes at the next compaction, which a load asks for
when it is done.

Here, on the node that receives the request:

1. `spool`: the body goes to a scratch file under the node's data folder, never into memory,
   at most `api.max_load_bytes`, with a CRC-32 computed on the way. The body may take as long
   as it needs while bytes keep arriving; a silence of `api.request_timeout_ms` is a 408.
2. `check_file` (SQLite's `quick_check`): a file that is not SQLite, truncated or damaged is a
   400 before anything enters the log.
3. A follower forwards the spooled file to the leader's `/db/load` over HTTP (or answers 301
   with `redirect`); the leader proposes chunk 0, then the rest with a bounded window of
   entries waiting to apply, then the commit, and answers with the commit's outcome.
4. If it cannot finish (leadership lost, a timeout), it proposes an abort so every node drops
   the staged chunks, and answers 503 saying that nothing was loaded. A commit that is in
   the log but not yet applied when the wait ends is reported as such: it will apply.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import StreamReader

from zraft.api.errors import ApiError, BadRequest, NotLeader, Timeout, TooLarge, Unavailable
from zraft.store.command import LoadAbort, LoadChunk, LoadCommit, encode_load_step, new_load_id
from zraft.store.loading import NODE_ERRORS, check_file
from zraft.wire.messages import JsonValue, RenderOptions

CHUNK_BYTES = 1 << 20
"""Raw bytes per chunk entry: small next to the wire cap and the fetch batches, large enough
that a 1 GB file is about a thousand entries."""
WINDOW = 4
"""Chunk entries proposed but not yet applied, at most: memory stays about WINDOW MiB."""
COMMIT_BYTES_PER_S = 20 << 20
"""Added to the commit's wait: assembling, checking and swapping a file takes time on every node."""
SLOWEST_LOAD_BYTES_PER_S = 2 << 20
"""How slowly a whole load may go through the log before a forwarding follower gives up
waiting for the leader's answer (1 GB: about 8 minutes; measured: 45-62 s on 2 cores)."""
FORWARDED_HEADER = "X-Zraft-Forwarded-Load"
"""Marks a load a follower forwarded, so that the receiver never forwards it again."""


@dataclass(frozen=True, slots=True)
class Spooled:
    path: Path
    size: int
    crc: int


ProposeFn = Callable[[bytes, float], Awaitable[tuple[int, int]]]
WaitFn = Callable[[int, int, float, RenderOptions], Awaitable[JsonValue]]


async def spool(content: StreamReader, prefix: bytes, path: Path, limit: int, idle_s: float) -> Spooled:
    """Write ``prefix`` and the rest of the body to ``path``; TooLarge past ``limit`` bytes,
    TimeoutError after ``idle_s`` without a byte."""
    crc, size = zlib.crc32(prefix), len(prefix)
    if size > limit:
        raise TooLarge(f"load too large: more than {limit} bytes")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        await asyncio.to_thread(_write_all, fd, prefix)
        pending = bytearray()
        while True:
            async with asyncio.timeout(idle_s):
                piece = await content.readany()
            if piece:
                crc = zlib.crc32(piece, crc)
                size += len(piece)
                if size > limit:
                    raise TooLarge(f"load too large: more than {limit} bytes")
                pending += piece
            if len(pending) >= CHUNK_BYTES or (not piece and pending):
                await asyncio.to_thread(_write_all, fd, bytes(pending))
                pending.clear()
            if not piece:
                break
    finally:
        os.close(fd)
    return Spooled(path, size, crc)


async def check(spooled: Spooled) -> None:
    """BadRequest when the spooled file cannot be loaded; Unavailable when this node cannot tell."""
    try:
        problem = await asyncio.to_thread(check_file, str(spooled.path))
    except NODE_ERRORS as exc:
        raise Unavailable(f"load failed on this node: {exc}") from None
    if problem is not None:
        raise BadRequest(problem)


async def through_log(spooled: Spooled, propose: ProposeFn, wait: WaitFn, timeout: float) -> list[JsonValue]:
    """Propose the spooled file as chunks and a commit; the commit's results. Raises
    NotLeader before the first chunk is in the log, Unavailable once chunks are (after
    proposing an abort), Timeout when the commit is in the log but not yet applied."""
    load_id = new_load_id()
    chunks = max(1, -(-spooled.size // CHUNK_BYTES))
    options = RenderOptions()
    waits: list[asyncio.Task[JsonValue]] = []
    started = False
    try:
        with open(spooled.path, "rb") as f:
            for seq in range(chunks):
                data = encode_load_step(LoadChunk(load_id, seq, await asyncio.to_thread(f.read, CHUNK_BYTES)))
                index, term = await propose(data, timeout)
                started = True
                waits.append(asyncio.ensure_future(wait(index, term, timeout, options)))
                if seq == 0 or len(waits) >= WINDOW:  # chunk 0 first: it clears older staging
                    await _settle(waits, keep=0 if seq == 0 else WINDOW // 2)
        await _settle(waits, keep=0)
    except NotLeader:
        if not started:
            raise
        await _abandon(load_id, propose, timeout)
        raise Unavailable("load interrupted: leadership changed while it was sent; nothing was loaded") from None
    except (ApiError, OSError) as exc:
        await _abandon(load_id, propose, timeout)
        raise Unavailable(f"load interrupted: {exc}; nothing was loaded") from None
    finally:
        for task in waits:
            task.cancel()
    commit = encode_load_step(LoadCommit(load_id, chunks, spooled.size, spooled.crc))
    try:
        index, term = await propose(commit, timeout)
    except Timeout:  # it may have been appended: say so rather than drop what it would swap in
        raise Timeout(f"the commit of load {load_id} was sent but not confirmed; it may still apply") from None
    except ApiError as exc:  # refused, so not in the log: the staged chunks must go
        await _abandon(load_id, propose, timeout)
        raise Unavailable(f"load interrupted before its commit: {exc}; nothing was loaded") from None
    patience = timeout + spooled.size / COMMIT_BYTES_PER_S
    try:
        result = await wait(index, term, patience, options)
    except Timeout:
        raise Timeout(f"load committed at index {index} but not yet applied here after {patience:.0f} s; "
                      "it will be applied") from None
    return _result_list(result)


async def _settle(waits: list[asyncio.Task[JsonValue]], keep: int) -> None:
    """Wait until at most ``keep`` chunk entries are still waiting to apply."""
    while len(waits) > keep:
        await waits.pop(0)


async def _abandon(load_id: str, propose: ProposeFn, timeout: float) -> None:
    """Best effort: ask every node to drop what this load staged (the next load's chunk 0
    would, otherwise)."""
    try:
        await propose(encode_load_step(LoadAbort(load_id, "")), min(timeout, 5.0))
    except Exception:  # noqa: BLE001 - a failed clean-up must not hide why the load failed
        pass


async def forward(spooled: Spooled, leader_http: str, query: str, timeout: float) -> tuple[int, bytes, str]:
    """POST the spooled file to the leader's /db/load; its status, body and content type."""
    url = f"http://{leader_http}/db/load" + (f"?{query}" if query else "")
    limit = aiohttp.ClientTimeout(total=None, sock_connect=timeout,
                                  sock_read=timeout + spooled.size / SLOWEST_LOAD_BYTES_PER_S)
    try:
        async with aiohttp.ClientSession(timeout=limit) as session:
            with open(spooled.path, "rb") as f:
                headers = {FORWARDED_HEADER: "1", "Content-Type": "application/octet-stream"}
                async with session.post(url, data=f, headers=headers) as response:
                    return response.status, await response.read(), response.content_type
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"load could not be forwarded to the leader at {leader_http}: {exc}") from None


def _result_list(result: JsonValue) -> list[JsonValue]:
    if isinstance(result, dict):
        result = result.get("results", [])
    return list(result) if isinstance(result, list) else []


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


__all__ = ["CHUNK_BYTES", "FORWARDED_HEADER", "Spooled", "check", "forward", "remove", "spool", "through_log"]
