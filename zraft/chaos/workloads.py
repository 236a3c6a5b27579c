"""The chaos suite's client side: what each workload asks of the cluster, and how an HTTP
answer becomes `ok`, `fail` (certainly did not happen) or `info` (nobody knows).

Clients speak rqlite's HTTP API, as users do. The classification errs towards `info`:
calling something `fail` that did happen would hide a real bug, while an extra `info` only
costs the checker time. So only two answers count as "did not happen":
- the connection was refused (nothing reached the node), or the request was rejected as
  malformed (400) -- neither can have entered the log;
- the statement ran and its result says it changed nothing: a SQL error inside a 200, or
  a compare-and-set that matched no row (`rows_affected` 0).
Everything else that is not a clean 200 -- timeouts, 503s, resets -- is `info`.

Workloads:
- register: read / write / cas on many keys, unique values; each key gets a bounded number
  of operations so the per-key linearizability search stays small.
- set: unique inserts; the set is read on every node once the cluster has healed.
- bank: transfers between accounts in one `?transaction` request; every read (at any level:
  a transaction is atomic on every node) must see the same total.
"""

from __future__ import annotations

import http.client
import itertools
import random
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from zraft.chaos.history import JSON, Key

REQUEST_TIMEOUT_S = 5.0
"""What the server may spend on a request (sent as rqlite's `timeout`)."""
SOCKET_TIMEOUT_S = REQUEST_TIMEOUT_S + 2.0
"""What a client waits for an answer before calling the outcome unknown."""


class Refused(Exception):
    """The operation certainly did not take effect."""


class Indeterminate(Exception):
    """The operation may or may not have taken effect."""


@dataclass(frozen=True, slots=True)
class OpPlan:
    """One operation a worker is about to perform, as the history records its invocation."""

    f: str
    key: Key
    value: JSON
    level: str = ""


class NodeClient:
    """One keep-alive HTTP connection to one node's API, owned by one worker thread."""

    def __init__(self, http_address: str, timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        host, _, port = http_address.rpartition(":")
        self.address = http_address
        self._host, self._port, self._timeout = host, int(port), timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, path: str, body: Any, params: dict[str, str]) -> Any:
        """POST a JSON body; return the decoded 200 answer or raise Refused / Indeterminate."""
        query = urlencode({**params, "timeout": f"{REQUEST_TIMEOUT_S:g}s"})
        conn = self._connection()
        try:
            conn.request("POST", f"{path}?{query}", body=orjson.dumps(body),
                         headers={"Content-Type": "application/json"})
        except ConnectionRefusedError as exc:
            self.close()
            raise Refused(f"connection refused by {self.address}") from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Indeterminate(f"{type(exc).__name__} sending to {self.address}") from exc
        try:
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Indeterminate(f"{type(exc).__name__} waiting for {self.address}") from exc
        if response.status == 400:
            raise Refused(f"400 from {self.address}: {payload[:200]!r}")
        if response.status != 200:
            raise Indeterminate(f"{response.status} from {self.address}: {payload[:200]!r}")
        try:
            answer = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise Indeterminate(f"undecodable answer from {self.address}") from exc
        if not isinstance(answer, dict) or answer.get("error"):
            raise Indeterminate(f"request error from {self.address}: {answer!r:.200}")
        return answer

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.connect()
                self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except ConnectionRefusedError as exc:
                self.close()
                raise Refused(f"connection refused by {self.address}") from exc
            except OSError as exc:
                self.close()
                raise Refused(f"cannot connect to {self.address}: {exc}") from exc
        return self._conn

    def execute(self, statements: list[Any], transaction: bool = False) -> list[dict[str, Any]]:
        params = {"transaction": "true"} if transaction else {}
        return _results(self.post("/db/execute", statements, params), len(statements))

    def query(self, statements: list[Any], level: str) -> list[dict[str, Any]]:
        return _results(self.post("/db/query", statements, {"level": level}), len(statements))


def _results(answer: dict[str, Any], expected: int) -> list[dict[str, Any]]:
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != expected:
        raise Indeterminate(f"malformed results: {answer!r:.200}")
    return results


def _refuse_on_statement_error(results: list[dict[str, Any]]) -> None:
    """A SQL error inside a 200: the statement ran and changed nothing."""
    error = next((r["error"] for r in results if isinstance(r, dict) and r.get("error")), None)
    if error:
        raise Refused(str(error))


class Workload:
    """What to set up, what each operation is, and what to read at the end."""

    name = ""
    read_levels: Sequence[str] = ("linearizable", "strong")

    def schema(self) -> list[Any]:
        raise NotImplementedError

    def plan(self, rng: random.Random) -> OpPlan:
        raise NotImplementedError

    def perform(self, client: NodeClient, op: OpPlan) -> JSON:
        """Run `op`; return what an `ok` completion records, or raise Refused / Indeterminate."""
        raise NotImplementedError

    def final_read(self, client: NodeClient) -> OpPlan | None:
        """The read taken on every node after healing, or None if the workload has none."""
        return None


class RegisterWorkload(Workload):
    """read / write / cas on keys `r0, r1, ...`; a few keys are live at a time and each is
    retired after `ops_per_key` operations, which bounds every per-key search."""

    name = "register"

    def __init__(self, keys_live: int = 4, ops_per_key: int = 150,
                 read_levels: Sequence[str] = ("linearizable", "strong")) -> None:
        self.keys_live, self.ops_per_key = keys_live, ops_per_key
        self.read_levels = tuple(read_levels)
        self._lock = threading.Lock()
        self._ops = 0
        self._values = itertools.count(1)
        self._seen: dict[str, int] = {}

    def schema(self) -> list[Any]:
        return ["CREATE TABLE IF NOT EXISTS registers (k TEXT PRIMARY KEY, v INTEGER)"]

    def plan(self, rng: random.Random) -> OpPlan:
        with self._lock:
            generation = self._ops // (self.keys_live * self.ops_per_key)
            self._ops += 1
            key = f"r{generation * self.keys_live + rng.randrange(self.keys_live)}"
            value = next(self._values)
            seen = self._seen.get(key)
        roll = rng.random()
        if roll < 0.5:
            return OpPlan("read", key, None, rng.choice(self.read_levels))
        if roll < 0.8 or seen is None:
            return OpPlan("write", key, value)
        return OpPlan("cas", key, [seen, value])

    def _remember(self, key: str, value: object) -> None:
        if isinstance(value, int):
            with self._lock:
                self._seen[key] = value

    def perform(self, client: NodeClient, op: OpPlan) -> JSON:
        if op.f == "read":
            results = client.query([["SELECT v FROM registers WHERE k = ?", op.key]], op.level)
            _refuse_on_statement_error(results)
            rows = results[0].get("values") or []
            value = rows[0][0] if rows else None
            self._remember(str(op.key), value)
            return value
        if op.f == "write":
            results = client.execute([["INSERT INTO registers (k, v) VALUES (?, ?) "
                                       "ON CONFLICT (k) DO UPDATE SET v = excluded.v", op.key, op.value]])
            _refuse_on_statement_error(results)
            self._remember(str(op.key), op.value)
            return op.value
        assert isinstance(op.value, list)
        expected, new = op.value
        results = client.execute([["UPDATE registers SET v = ? WHERE k = ? AND v = ?", new, op.key, expected]])
        _refuse_on_statement_error(results)
        if results[0].get("rows_affected", 0) != 1:
            raise Refused("cas matched no row")
        self._remember(str(op.key), new)
        return op.value


class SetWorkload(Workload):
    """Unique inserts; the whole set is read on every node after healing."""

    name = "set"

    def __init__(self) -> None:
        self._values = itertools.count(1)
        self._lock = threading.Lock()

    def schema(self) -> list[Any]:
        return ["CREATE TABLE IF NOT EXISTS elements (v INTEGER PRIMARY KEY)"]

    def plan(self, rng: random.Random) -> OpPlan:
        with self._lock:
            return OpPlan("add", None, next(self._values))

    def perform(self, client: NodeClient, op: OpPlan) -> JSON:
        if op.f == "read":
            results = client.query(["SELECT v FROM elements ORDER BY v"], "none")
            _refuse_on_statement_error(results)
            return [row[0] for row in results[0].get("values") or []]
        results = client.execute([["INSERT INTO elements (v) VALUES (?)", op.value]])
        _refuse_on_statement_error(results)
        return op.value

    def final_read(self, client: NodeClient) -> OpPlan | None:
        return OpPlan("read", None, None, "none")


class BankWorkload(Workload):
    """Transfers between `accounts` accounts inside `?transaction`; balances never go
    negative (a CHECK constraint makes an overdraft roll the whole transfer back)."""

    name = "bank"
    read_levels: Sequence[str] = ("none", "weak", "linearizable", "strong")

    def __init__(self, accounts: int = 5, initial: int = 100) -> None:
        self.accounts, self.initial = accounts, initial

    @property
    def total(self) -> int:
        return self.accounts * self.initial

    def schema(self) -> list[Any]:
        rows = ", ".join(f"({i}, {self.initial})" for i in range(self.accounts))
        return ["CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, "
                "balance INTEGER NOT NULL CHECK (balance >= 0))",
                f"INSERT OR IGNORE INTO accounts (id, balance) VALUES {rows}"]

    def plan(self, rng: random.Random) -> OpPlan:
        if rng.random() < 0.4:
            return OpPlan("read", None, None, rng.choice(self.read_levels))
        source, target = rng.sample(range(self.accounts), 2)
        return OpPlan("transfer", None, {"from": source, "to": target, "amount": rng.randint(1, 20)})

    def perform(self, client: NodeClient, op: OpPlan) -> JSON:
        if op.f == "read":
            results = client.query(["SELECT id, balance FROM accounts ORDER BY id"], op.level)
            _refuse_on_statement_error(results)
            return {str(row[0]): row[1] for row in results[0].get("values") or []}
        assert isinstance(op.value, dict)
        amount, source, target = op.value["amount"], op.value["from"], op.value["to"]
        results = client.execute([
            ["UPDATE accounts SET balance = balance - ? WHERE id = ?", amount, source],
            ["UPDATE accounts SET balance = balance + ? WHERE id = ?", amount, target],
        ], transaction=True)
        _refuse_on_statement_error(results)
        return op.value

    def final_read(self, client: NodeClient) -> OpPlan | None:
        return OpPlan("read", None, None, "none")


def make_workload(name: str, read_levels: Sequence[str] | None = None) -> Workload:
    if name == "register":
        return RegisterWorkload(read_levels=read_levels or ("linearizable", "strong"))
    if name == "set":
        return SetWorkload()
    if name == "bank":
        workload = BankWorkload()
        if read_levels:
            workload.read_levels = tuple(read_levels)
        return workload
    raise ValueError(f"unknown workload {name!r}")
