"""The core must stay a pure state machine: no I/O, clocks, threads or global randomness.

The check reads every module of zraft.raft with `ast` and fails on any import outside a short
allow-list, so that a forbidden dependency cannot slip in through an alias or a nested import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import zraft.raft

CORE_DIR = Path(zraft.raft.__file__).parent
ALLOWED = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "typing"}
FORBIDDEN_EXAMPLES = {"zmq", "orjson", "sqlite3", "apsw", "socket", "threading", "asyncio",
                      "time", "random", "os", "subprocess", "multiprocessing", "select",
                      "signal", "io", "pathlib", "datetime", "logging", "secrets"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in {"__import__", "exec", "eval", "open"}:
            names.add(f"<call {node.func.id}>")  # type: ignore[attr-defined]
    return names


def test_core_imports_only_pure_modules() -> None:
    modules = sorted(CORE_DIR.glob("*.py"))
    assert len(modules) >= 5
    for path in modules:
        for name in imported_modules(path):
            pure = name in ALLOWED or name.startswith("zraft.raft")
            assert pure, f"{path.name} imports {name!r}; the Raft core must stay pure"


def test_purity_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself must bite: a module importing any forbidden name is flagged."""
    for forbidden in FORBIDDEN_EXAMPLES:
        bad = tmp_path / "bad.py"
        bad.write_text(f"import {forbidden} as x\n")
        assert imported_modules(bad) - ALLOWED, forbidden
        bad.write_text(f"def f():\n    from {forbidden} import y\n")
        assert imported_modules(bad) - ALLOWED, forbidden
