"""The shape of the code base, checked: what issue 9 promised a newcomer would find.

- no import circle anywhere in zraft/ (imports inside functions count; only those under
  `if TYPE_CHECKING:` do not), and no part of a process imports its shell;
- the process shells stay shells: raft_proc.py and store_proc.py under 450 lines, no class in
  zraft/procs/ with more than 15 attributes;
- every message field on the wire is typed: no `Any`, and free-form JSON only where a field
  carries clients' own data;
- every package has a DESIGN.md.
Each check is shown to bite on a planted example.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "zraft"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def imports_of(source: str, name: str, known: set[str], is_package: bool) -> set[str]:
    """The zraft modules `source` (module `name`) imports: `from a.b import c` imports a.b.c
    when that is a module, else a.b; relative imports are resolved."""
    tree = ast.parse(source)
    skipped = _type_checking_nodes(tree)
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    out.add(target)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    known = set(sources)
    return {name: imports_of(src, name, known, pkg) for name, (src, pkg) in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a path that returns to its start; None when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def zraft_graph() -> dict[str, set[str]]:
    return import_graph({name: (path.read_text(), path.name == "__init__.py") for name, path in modules().items()})


def test_no_import_circle_in_zraft() -> None:
    assert find_cycle(zraft_graph()) is None


def test_the_circle_finder_bites() -> None:
    planted = {"zraft.a": ("from zraft.b import x\n", False), "zraft.b": ("def f():\n    import zraft.c\n", False),
               "zraft.c": ("from zraft import a\n", False), "zraft": ("", True),
               "zraft.d": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import zraft.a\n", False)}
    assert find_cycle(import_graph(planted)) == ["zraft.a", "zraft.b", "zraft.c", "zraft.a"]
    del planted["zraft.c"]
    assert find_cycle(import_graph(planted)) is None


def test_no_part_imports_its_shell() -> None:
    graph = zraft_graph()
    shells = {name for name in graph if name.startswith("zraft.procs.") and name.endswith("_proc")}
    for name, imported in graph.items():
        if name.startswith("zraft.procs.") and name not in shells:
            assert not imported & shells, f"{name} imports {imported & shells}"


def test_process_shells_stay_small() -> None:
    for shell in ("raft_proc.py", "store_proc.py"):
        lines = len((ROOT / "procs" / shell).read_text().splitlines())
        assert lines < 450, f"{shell} has {lines} lines"


def attributes(cls: ast.ClassDef) -> set[str]:
    """Instance attributes: `self.x = ...` anywhere in the class, plus annotated fields."""
    names = {t.target.id for t in cls.body if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)
             and "ClassVar" not in ast.unparse(t.annotation)}
    for node in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for item in ast.walk(target):
                if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                    names.add(item.attr)
    return names


def test_no_class_in_procs_has_more_than_15_attributes() -> None:
    for path in (ROOT / "procs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                count = len(attributes(node))
                assert count <= 15, f"{path.name}:{node.name} has {count} attributes: {sorted(attributes(node))}"


def test_the_attribute_count_bites() -> None:
    cls = ast.parse("class C:\n    x: int\n    K: ClassVar[int]\n    def f(self):\n"
                    "        self.a = 1\n        self.a, self.b = 1, 2\n        self.c += 1\n").body[0]
    assert isinstance(cls, ast.ClassDef) and attributes(cls) == {"x", "a", "b", "c"}


FREE_JSON_FIELDS = {
    "AppliedRow.result", "AppliedResult.result", "QueryResult.results", "ClientResults.results",
    "StatusReply.status",
}
"""Client data: SQL results, and the operator's /status document (rqlite's shape)."""


def untyped_fields(source: str) -> set[str]:
    """Dataclass fields of `source` whose annotation is Any or free JSON, as Class.field."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    annotation = ast.unparse(item.annotation)
                    if any(word in annotation for word in ("Any", "Json")) and "ClassVar" not in annotation:
                        out.add(f"{node.name}.{item.target.id}")
    return out


def test_message_fields_are_typed() -> None:
    assert untyped_fields((ROOT / "wire" / "messages.py").read_text()) <= FREE_JSON_FIELDS


def test_the_typed_field_check_bites() -> None:
    planted = "class M:\n    a: int\n    b: dict[str, Any]\n    c: list[JsonValue]\n    K: ClassVar[Any]\n"
    assert untyped_fields(planted) == {"M.b", "M.c"}


def test_every_package_has_a_design_document() -> None:
    packages = [p.parent for p in ROOT.rglob("__init__.py") if p.parent != ROOT]
    missing = [str(p.relative_to(ROOT)) for p in packages if not (p / "DESIGN.md").exists()]
    assert not missing, f"packages without DESIGN.md: {missing}"


@pytest.mark.parametrize("module", ["zraft.procs.raft_proc", "zraft.procs.store_proc", "zraft.procs.api_proc"])
def test_each_process_module_has_a_run_entry(module: str) -> None:
    tree = ast.parse(modules()[module].read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body)
