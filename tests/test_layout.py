"""The package's import graph: no module-level import circles, and no circles through function-level
imports either, but the one the CUDA self-check needs (it runs the model on the backend it checks)."""

from __future__ import annotations

import ast
from pathlib import Path

import lzo_bench

PACKAGE = Path(lzo_bench.__file__).parent

#: backends runs the self-check, which runs the model, which selects a backend: function-level only
KNOWN = {frozenset({"lzo_bench.ops.backends", "lzo_bench.ops.selfcheck", "lzo_bench.core.model"})}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(tree: ast.Module, in_functions: bool) -> set[str]:
    """Absolute imports (``a.b`` and ``a.b.name``), outside ``if TYPE_CHECKING:`` blocks; inside
    function bodies too when ``in_functions``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for s in ast.iter_child_nodes(node):
            if isinstance(s, ast.If) and "TYPE_CHECKING" in ast.unparse(s.test):
                for x in s.orelse:
                    visit(ast.Module(body=[x], type_ignores=[]))
            elif isinstance(s, ast.Import):
                found.update(a.name for a in s.names)
            elif isinstance(s, ast.ImportFrom) and s.module and s.level == 0:
                found.add(s.module)
                found.update(f"{s.module}.{a.name}" for a in s.names)
            elif not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or in_functions:
                visit(s)

    visit(tree)
    return found


def _cycles(in_functions: bool) -> set[frozenset[str]]:
    """The import graph's strongly connected components of more than one module."""
    mods = _modules()
    graph = {n: {i for i in _imports(ast.parse(p.read_text()), in_functions) if i in mods and i != n}
             for n, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: set[frozenset[str]] = set()

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while (w := stack.pop()) != v:
                group.add(w)
            if group:
                groups.add(frozenset(group | {v}))

    for v in graph:
        if v not in index:
            strong(v)
    return groups


def test_no_module_level_import_circles():
    assert _cycles(in_functions=False) == set()


def test_function_level_imports_close_no_other_circle():
    assert _cycles(in_functions=True) <= KNOWN
