"""`zraft shell`: an interactive SQL shell like rqlite's, speaking rqlite's HTTP API.

SQL lines go to ``/db/request`` when the server has it, else to ``/db/query`` (reads) or
``/db/execute`` (writes); dot-commands (``.help`` lists them) read the node's status endpoints.
On a terminal, line editing and history (``~/.zraft_history``) come from prompt_toolkit; when
stdin is not a terminal, lines are read from it plainly so the shell can be scripted.
Only the stdlib HTTP client is used.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any, TextIO

from zraft.download import BackupRequest, DownloadError, download
from zraft.upload import UploadError, is_sqlite, upload

HISTORY_FILE = "~/.zraft_history"
LEVELS = ("none", "weak", "linearizable", "strong")
VERSION_HEADER = "X-Rqlite-Version"

HELP = """\
.backup FILE                                  Write a backup of the database (a SQLite file) to FILE
.boot FILE                                    Load a SQLite file into a single-node cluster
.consistency [none|weak|linearizable|strong]  Show or set the read consistency level
.dump [FILE [TABLE,TABLE...]]                 Dump the database (or some tables) as SQL, to FILE or the screen
.exit                                         Exit this program
.expvar                                       Show expvar (Go runtime) information for the node
.help                                         Show this message
.indexes                                      Show names of all indexes
.leader                                       Show the current cluster leader
.nodes [all]                                  Show connection status of cluster nodes
.quit                                         Exit this program
.ready                                        Show ready status for the node
.remove NODEID                                Remove a node from the cluster
.restore FILE                                 Load a SQLite file or a SQL dump, replacing the database
.schema                                       Show CREATE statements for all tables
.snapshot [TRAILING]                          Compact the node's Raft log now, keeping TRAILING entries
.status                                       Show status and diagnostic information for the node
.stepdown [NODEID]                            Instruct the leader to step down, optionally naming the new leader
.tables                                       List names of tables
.timer [on|off]                               Turn query timings on or off
Any other line is sent to the node as one SQL statement."""

# First keywords of statements that only read (rqlite's shell sends everything to /db/request,
# which decides with sqlite3_stmt_readonly; without it, classify by the leading keyword).
_READ_KEYWORDS = frozenset({"SELECT", "PRAGMA", "EXPLAIN", "WITH", "VALUES"})
_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_WRITE_IN_CTE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.I)


# zraft's own bookkeeping tables (e.g. _zraft_meta) are hidden from .tables/.schema/.dump.
_NOT_INTERNAL = "tbl_name NOT GLOB '_zraft_*'"


class ShellError(Exception):
    """A failure to show the user as one line (never a traceback)."""


def is_query(sql: str) -> bool:
    """Whether a statement is a read, for servers without /db/request."""
    body = _LEADING_NOISE.sub("", sql, count=1)
    match = re.match(r"[A-Za-z]+", body)
    if match is None:
        return False
    keyword = match.group(0).upper()
    if keyword not in _READ_KEYWORDS:
        return False
    if keyword == "PRAGMA":
        return "=" not in body  # PRAGMA x = y sets something
    if keyword == "WITH":
        return _WRITE_IN_CTE.search(_strip_strings(body)) is None
    return True


def _strip_strings(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", sql)


@dataclass
class Response:
    status: int
    reason: str
    headers: Message
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ShellError(f"server sent invalid JSON: {self.text()[:200]!r}") from None

    def failure(self) -> str:
        message = self.text().strip()
        return f"server responded with {self.status} {self.reason}" + (f": {message}" if message else "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Message, newurl: str) -> urllib.request.Request | None:
        return None  # the client follows redirects itself, re-sending POST bodies


class Client:
    """A tiny synchronous rqlite HTTP client on urllib; follows leader redirects itself."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect())

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base_url).netloc

    def request(self, method: str, path: str, params: Iterable[tuple[str, str]] = (),
                body: Any = None) -> Response:
        query = urllib.parse.urlencode(list(params))
        data = None if body is None else json.dumps(body).encode()
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        for _ in range(5):
            response = self._send(method, url, data)
            location = response.headers.get("Location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            url = urllib.parse.urljoin(url, location)
            parts = urllib.parse.urlsplit(url)
            self.base_url = f"{parts.scheme}://{parts.netloc}"
        raise ShellError("too many redirects")

    def _send(self, method: str, url: str, data: bytes | None) -> Response:
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return Response(resp.status, resp.reason, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except OSError:
                body = b""
            finally:
                exc.close()
            return Response(exc.code, str(exc.reason), exc.headers, body)
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise ShellError(f"cannot reach {self.host}: {reason}") from None


@dataclass
class Settings:
    level: str = "weak"
    timer: bool = False


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))  # as Go's %v prints a float64
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_table(columns: list[str], rows: list[list[Any]]) -> str:
    """rqlite's tablewriter look: +---+ borders, a header row, left-aligned cells."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, cell in enumerate(row[:len(widths)]):
            widths[i] = max(widths[i], len(cell))
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: list[str]) -> str:
        padded = values + [""] * (len(widths) - len(values))
        return "|" + "|".join(f" {v.ljust(w)} " for v, w in zip(padded, widths)) + "|"

    out = [rule, line(columns), rule]
    out.extend(line(row) for row in cells)
    if cells:
        out.append(rule)
    return "\n".join(out)


def format_tree(doc: Any, indent: int = 0) -> Iterator[str]:
    """Nested JSON as indented `key: value` lines, like rqlite's .status."""
    pad = "  " * indent
    if isinstance(doc, dict):
        for key in sorted(doc, key=str):
            value = doc[key]
            if isinstance(value, (dict, list)) and value:
                yield f"{pad}{key}:"
                yield from format_tree(value, indent + 1)
            else:
                yield f"{pad}{key}: {_scalar(value)}"
    elif isinstance(doc, list):
        for item in doc:
            if isinstance(item, (dict, list)) and item:
                yield f"{pad}-"
                yield from format_tree(item, indent + 1)
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield f"{pad}{_scalar(doc)}"


def _scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return format_value(value)


def sql_literal(value: Any, blob: bool = False) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):  # ?blob_array
        return "X'" + bytes(value).hex().upper() + "'"
    if blob and isinstance(value, str):
        try:
            return "X'" + base64.b64decode(value, validate=True).hex().upper() + "'"
        except ValueError:
            pass
    return "'" + str(value).replace("'", "''") + "'"


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Shell:
    client: Client
    out: TextIO
    settings: Settings = field(default_factory=Settings)
    use_request: bool | None = None  # None: not yet known whether /db/request exists
    errors: int = 0

    # -- output -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, message: str) -> None:
        self.errors += 1
        self.say(f"ERR! {message}")

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """Run one input line; False when the user asked to leave."""
        line = line.strip()
        if not line:
            return True
        try:
            if line.startswith("."):
                return self.command(line)
            if line.lower().rstrip(";") in ("quit", "exit"):
                return False
            self.sql(line)
        except ShellError as exc:
            self.error(str(exc))
        return True

    def command(self, line: str) -> bool:
        name, _, rest = line.partition(" ")
        args = rest.split()
        name = name.lower()
        if name in (".quit", ".exit"):
            return False
        handler = {
            ".help": self.cmd_help, ".tables": self.cmd_tables, ".schema": self.cmd_schema,
            ".indexes": self.cmd_indexes, ".dump": self.cmd_dump, ".nodes": self.cmd_nodes,
            ".status": self.cmd_status, ".expvar": self.cmd_expvar, ".ready": self.cmd_ready,
            ".timer": self.cmd_timer, ".consistency": self.cmd_consistency,
            ".leader": self.cmd_leader, ".backup": self.cmd_backup, ".snapshot": self.cmd_snapshot,
            ".restore": self.cmd_restore, ".boot": self.cmd_boot, ".remove": self.cmd_remove,
            ".stepdown": self.cmd_stepdown,
        }.get(name)
        if handler is None:
            self.error(f'unknown command "{name}", enter ".help" for usage hints')
        else:
            handler(args)
        return True

    # -- SQL ----------------------------------------------------------------------------------
    def _params(self, read: bool) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if read:
            params.append(("level", self.settings.level))
        if self.settings.timer:
            params.append(("timings", ""))
        return params

    def run_sql(self, sql: str, read: bool | None = None) -> list[dict[str, Any]]:
        """Send one statement; returns its results or raises ShellError for request failures.
        `read=None` lets the server decide (/db/request) when it can."""
        if read is None and self.use_request is not False:
            response = self.client.request("POST", "/db/request", self._params(True), [sql])
            if response.status in (404, 405) and self.use_request is None:
                self.use_request = False
            else:
                self.use_request = True
                return self._results(response)
        if read is None:
            read = is_query(sql)
        path = "/db/query" if read else "/db/execute"
        return self._results(self.client.request("POST", path, self._params(read), [sql]))

    def _results(self, response: Response) -> list[dict[str, Any]]:
        if response.status != 200:
            raise ShellError(response.failure())
        doc = response.json()
        if not isinstance(doc, dict):
            raise ShellError(f"unexpected response: {response.text()[:200]}")
        if doc.get("error"):
            raise ShellError(str(doc["error"]))
        results = doc.get("results") or []
        return [r for r in results if isinstance(r, dict)]

    def sql(self, sql: str, read: bool | None = None) -> None:
        for result in self.run_sql(sql, read):
            self.show_result(result)

    def show_result(self, result: dict[str, Any]) -> None:
        if result.get("error"):
            self.error(str(result["error"]))
            return
        if "columns" in result:
            self.say(format_table([str(c) for c in result["columns"]], result.get("values") or []))
        elif isinstance(result.get("rows"), list):  # associative form, should a server send it
            rows = result["rows"]
            columns = list(rows[0]) if rows else list(result.get("types") or {})
            self.say(format_table(columns, [[row.get(c) for c in columns] for row in rows]))
        else:
            count = int(result.get("rows_affected", 0))
            self.say(f"{count} row{'' if count == 1 else 's'} affected")
        if self.settings.timer and "time" in result:
            self.say(f"Run Time: {float(result['time']):.6f} seconds")

    # -- dot-commands -------------------------------------------------------------------------
    def cmd_help(self, args: list[str]) -> None:
        self.say(HELP)

    def cmd_tables(self, args: list[str]) -> None:
        self.sql("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                 f"AND {_NOT_INTERNAL} ORDER BY name", read=True)

    def cmd_schema(self, args: list[str]) -> None:
        self.sql(f"SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND {_NOT_INTERNAL} ORDER BY rowid",
                 read=True)

    def cmd_indexes(self, args: list[str]) -> None:
        self.sql(f"SELECT name FROM sqlite_master WHERE type='index' AND {_NOT_INTERNAL} ORDER BY name",
                 read=True)

    def cmd_timer(self, args: list[str]) -> None:
        if args and args[0].lower() in ("on", "off"):
            self.settings.timer = args[0].lower() == "on"
        elif args:
            self.error(f'invalid argument "{args[0]}": use on or off')
        else:
            self.say(f"timer is {'on' if self.settings.timer else 'off'}")

    def cmd_consistency(self, args: list[str]) -> None:
        if not args:
            self.say(self.settings.level)
        elif args[0].lower() in LEVELS:
            self.settings.level = args[0].lower()
        else:
            self.error(f'invalid consistency level "{args[0]}": use {", ".join(LEVELS)}')

    def _get_json(self, path: str, params: Iterable[tuple[str, str]] = ()) -> Any:
        response = self.client.request("GET", path, params)
        if response.status == 404:
            raise ShellError(f"this server has no {path} endpoint (404 Not Found)")
        if response.status != 200:
            raise ShellError(response.failure())
        return response.json()

    def cmd_status(self, args: list[str]) -> None:
        self._print_tree(self._get_json("/status"))

    def cmd_expvar(self, args: list[str]) -> None:
        self._print_tree(self._get_json("/debug/vars"))

    def cmd_leader(self, args: list[str]) -> None:
        self._print_tree(self._get_json("/leader"))

    def cmd_nodes(self, args: list[str]) -> None:
        params = [("ver", "2")] + ([("nonvoters", "")] if args[:1] == ["all"] else [])
        doc = self._get_json("/nodes", params)
        if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
            doc = {str(n.get("id", i)): n for i, n in enumerate(doc["nodes"]) if isinstance(n, dict)}
        self._print_tree(doc)

    def cmd_remove(self, args: list[str]) -> None:
        """rqlite's `.remove NODEID`: DELETE /remove."""
        if len(args) != 1:
            raise ShellError("usage: .remove NODEID")
        response = self.client.request("DELETE", "/remove", body={"id": args[0]})
        if response.status != 200:
            raise ShellError(response.failure())
        self.say(f"node {args[0]} removed")

    def cmd_stepdown(self, args: list[str]) -> None:
        """rqlite's `.stepdown [NODEID]`: POST /leader?wait, naming the new leader if given."""
        if len(args) > 1:
            raise ShellError("usage: .stepdown [NODEID]")
        response = self.client.request("POST", "/leader", [("wait", "")], body={"id": args[0]} if args else None)
        if response.status != 200:
            raise ShellError(response.failure())
        self.say("leader stepped down" + (f": node {args[0]} leads now" if args else ""))

    def cmd_snapshot(self, args: list[str]) -> None:
        """rqlite's `.snapshot [TRAILING]`: POST /snapshot on this node."""
        if len(args) > 1 or (args and not args[0].isdigit()):
            raise ShellError("usage: .snapshot [TRAILING]")
        response = self.client.request("POST", "/snapshot", [("trailing_logs", args[0])] if args else [])
        if response.status == 200:
            self.say("snapshot taken: the log was compacted")
        elif response.status == 204:
            self.say("nothing to compact")
        else:
            raise ShellError(response.failure())

    def cmd_ready(self, args: list[str]) -> None:
        response = self.client.request("GET", "/readyz")
        text = response.text().rstrip("\n")
        if response.status == 200:
            self.say(text or "ready")
        else:
            self.error(response.failure())

    def _print_tree(self, doc: Any) -> None:
        for line in format_tree(doc):
            self.say(line)

    def cmd_backup(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ShellError("usage: .backup FILE")
        self._download(BackupRequest(), args[0])
        self.say("backup file written successfully")

    def cmd_restore(self, args: list[str]) -> None:
        """rqlite's `.restore FILE`: POST /db/load (a SQLite file or a SQL dump, told by its header)."""
        if len(args) != 1:
            raise ShellError("usage: .restore FILE")
        self._upload("/db/load", args[0])
        self.say("Database restored successfully.")

    def cmd_boot(self, args: list[str]) -> None:
        """rqlite's `.boot FILE`: POST /boot, a SQLite file into a single-node cluster."""
        if len(args) != 1:
            raise ShellError("usage: .boot FILE")
        path = Path(args[0]).expanduser()
        if path.is_file() and not is_sqlite(path):
            raise ShellError(f"{args[0]} is not a SQLite file")
        self._upload("/boot", args[0])
        self.say("Node booted successfully.")

    def _upload(self, endpoint: str, file: str) -> None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ShellError(f"cannot read {file}: no such file")
        try:
            upload(self.client.base_url, endpoint, path, self.client.timeout)
        except UploadError as exc:
            raise ShellError(str(exc)) from None

    def _download(self, request: BackupRequest, file: str) -> None:
        """Stream /db/backup into `file` (zraft.download: FILE.part, renamed when complete)."""
        try:
            download(self.client.base_url, request, Path(file).expanduser(), self.client.timeout)
        except DownloadError as exc:
            raise ShellError(str(exc)) from None

    def cmd_dump(self, args: list[str]) -> None:
        if args:
            self._dump_to_file(args[0], args[1] if len(args) > 1 else "")
            return
        response = self.client.request("GET", "/db/backup", [("fmt", "sql")])
        if response.status == 200:
            text = response.text()
        elif response.status in (404, 405):
            text = "\n".join(self.dump_lines()) + "\n"
        else:
            raise ShellError(response.failure())
        self.out.write(text)
        self.out.flush()

    def _dump_to_file(self, file: str, tables: str) -> None:
        """The node's dump streamed into `file`; one built from queries for a server without
        /db/backup?fmt=sql (all tables then)."""
        request = BackupRequest(fmt="sql", tables=tuple(t.strip() for t in tables.split(",") if t.strip()))
        try:
            download(self.client.base_url, request, Path(file).expanduser(), self.client.timeout)
        except DownloadError as exc:
            if exc.status not in (404, 405):
                raise ShellError(str(exc)) from None
            try:
                Path(file).expanduser().write_text("\n".join(self.dump_lines()) + "\n")
            except OSError as exc:
                raise ShellError(f"cannot write {file}: {exc.strerror or exc}") from None
        self.say(f"SQL text file written successfully to {file}")

    def _query_one(self, sql: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        results = self._results(self.client.request("POST", "/db/query", params, [sql]))
        if not results:
            raise ShellError("empty response")
        if results[0].get("error"):
            raise ShellError(str(results[0]["error"]))
        return results[0]

    def dump_lines(self) -> Iterator[str]:
        """A sqlite3-style dump built from queries, for servers without /db/backup?fmt=sql."""
        params = [("level", self.settings.level), ("blob_array", "")]
        master = self._query_one(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            f"AND name NOT LIKE 'sqlite_%' AND {_NOT_INTERNAL} ORDER BY rowid", params)
        entries = master.get("values") or []
        yield "PRAGMA foreign_keys=OFF;"
        yield "BEGIN TRANSACTION;"
        for kind, name, _tbl, sql in entries:
            if kind != "table":
                continue
            yield f"{sql};"
            rows = self._query_one(f"SELECT * FROM {quote_name(name)}", params)
            types = [str(t).lower() for t in rows.get("types") or []]
            for row in rows.get("values") or []:
                literals = [sql_literal(v, i < len(types) and types[i] == "blob") for i, v in enumerate(row)]
                yield f"INSERT INTO {quote_name(name)} VALUES({','.join(literals)});"
        for kind, _name, _tbl, sql in entries:
            if kind != "table":
                yield f"{sql};"
        yield "COMMIT;"


def base_url(host: str, scheme: str) -> str:
    if "://" in host:
        return host.rstrip("/")
    if ":" not in host:
        host = f"{host}:4001"
    return f"{scheme}://{host}"


def run(host: str, scheme: str, timeout: float = 30.0) -> int:
    """The shell's main loop; returns the process exit status."""
    shell = Shell(Client(base_url(host, scheme), timeout), sys.stdout)
    if sys.stdin.isatty():
        return _interactive(shell)
    for line in sys.stdin:
        if not shell.handle(line):
            break
    return 1 if shell.errors else 0


def _interactive(shell: Shell) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    history_path = Path(HISTORY_FILE).expanduser()
    history: FileHistory | InMemoryHistory
    try:
        history_path.touch(exist_ok=True)
        history = FileHistory(str(history_path))
    except OSError:
        history = InMemoryHistory()
    session: PromptSession[str] = PromptSession(history=history, auto_suggest=AutoSuggestFromHistory())
    shell.say('Welcome to the zraft shell.\nEnter ".help" for usage hints.')
    try:
        version = shell.client.request("GET", "/readyz", [("noleader", "")]).headers.get(VERSION_HEADER)
        shell.say(f"Connected to {shell.client.base_url} running version {version or 'unknown'}")
    except ShellError as exc:
        shell.say(f"ERR! {exc}")
    while True:
        try:
            line = session.prompt(f"{shell.client.host}> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        if not shell.handle(line):
            break
    return 0
