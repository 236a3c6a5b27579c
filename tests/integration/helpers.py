"""Helpers for tests that run real clusters: free ports, HTTP calls, waiting with deadlines.

Every server binds to 127.0.0.1 only. Nothing here sleeps to wait for a condition without a
deadline: `wait_for` polls and fails with the last observed value.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from zraft.cluster import port_free

T = TypeVar("T")


def free_port_base(span: int = 110) -> int:
    """A base port P such that P .. P+span are free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + span > 60000:
            continue
        if all(port_free(base + i) for i in range(span + 1)):
            return base
    raise RuntimeError("no free port range")


def http(method: str, url: str, body: Any = None, timeout: float = 10.0,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        text = exc.read()
        status = exc.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text.decode(errors="replace")


def execute(port: int, statements: list[Any], **params: str) -> tuple[int, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return http("POST", f"http://127.0.0.1:{port}/db/execute?{query}", statements)


def query(port: int, sql: str, level: str = "weak", timeout: float = 10.0) -> tuple[int, Any]:
    return http("POST", f"http://127.0.0.1:{port}/db/query?level={level}", [sql], timeout=timeout)


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - a failing probe is just "not yet"
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
