"""regionc's modules import each other without a cycle.

A cycle works or breaks depending on which module is imported first (a name read from a module
that is still half-initialised), so it shows up only in some entry points; this test finds one
from the source alone. The graph holds module-level imports of ``regionc.*`` (absolute and
relative); imports inside functions run after every module has loaded and are left out, and so
are imports under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import regionc

ROOT = Path(regionc.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: not in functions, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                walk(node.orelse)
            else:  # class bodies, if/try/with/for blocks: they run at import
                for field in ("body", "orelse", "finalbody"):
                    walk(getattr(node, field, []))
                for clause in (*getattr(node, "handlers", ()), *getattr(node, "cases", ())):
                    walk(clause.body)

    walk(tree.body)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The regionc modules ``name`` imports at module level."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in top_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            targets.add(submodule if submodule in modules else source)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imported_modules(name, path, set(names)) for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_regionc_has_no_import_cycle():
    graph = import_graph()
    assert "regionc.cudagraph.runner" in graph and graph["regionc.cudagraph.runner"]  # the walk found imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_cycle():
    graph = {"regionc.a": {"regionc.b"}, "regionc.b": {"regionc.c"}, "regionc.c": {"regionc.a"}, "regionc.d": set()}
    assert find_cycle(graph) == ["regionc.a", "regionc.b", "regionc.c", "regionc.a"]
    assert find_cycle({"regionc.a": {"regionc.b"}, "regionc.b": set()}) is None


def test_relative_and_guarded_imports_resolve(tmp_path):
    source = tmp_path / "b.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import c\nfrom ..d import thing\n"
                      "if TYPE_CHECKING:\n    from regionc.e import T\ntry:\n    import regionc.f\nexcept ImportError:\n"
                      "    pass\n\ndef later():\n    import regionc.g\n")
    modules = {"regionc.a.b", "regionc.a.c", "regionc.d", "regionc.e", "regionc.f", "regionc.g"}
    assert imported_modules("regionc.a.b", source, modules) == {"regionc.a.c", "regionc.d", "regionc.f"}
