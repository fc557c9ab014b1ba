"""The package's architecture (docs/ARCHITECTURE.md §2), enforced: no import circles at all, imports
only downwards through the layers, a docstring in every folder's ``__init__`` that names what lives
there, files small enough to hold one idea, and the public API importable at its paths."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import lzo_bench

PACKAGE = Path(lzo_bench.__file__).parent
KERNELS = PACKAGE.parent / "kernels"

#: each top-level part of the package and its layer: a module may import only parts of its layer or below
LAYER = {"core": 0, "runtime": 0, "spike": 0, "ops": 1, "data": 2, "nn": 2,
         "training": 3, "measure": 3, "export": 3, "experiments": 4, "cli": 5}
#: the parts that import nothing of lzo_bench beside themselves (and the root's ``__version__``)
SELF_CONTAINED = {"core", "runtime"}
MAX_PY_LINES, MAX_KERNEL_LINES = 400, 700


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


def _graph(in_functions: bool) -> dict[str, set[str]]:
    mods = _modules()
    return {n: {i for i in _imports(ast.parse(p.read_text()), in_functions) if i in mods and i != n}
            for n, p in mods.items()}


def _cycles(in_functions: bool) -> set[frozenset[str]]:
    """The import graph's strongly connected components of more than one module."""
    graph = _graph(in_functions)
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


def _part(module: str) -> str | None:
    """The top-level part of ``lzo_bench.<part>[.…]``; ``None`` for the root package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_module_level_import_circles():
    assert _cycles(in_functions=False) == set()


def test_no_import_circles_through_function_level_imports_either():
    assert _cycles(in_functions=True) == set()


def test_every_part_of_the_package_has_a_layer():
    assert {_part(m) for m in _modules()} - {None} == set(LAYER)


def test_imports_go_down_the_layers_only():
    wrong = sorted(f"{m} -> {i}" for m, imported in _graph(in_functions=True).items() for i in imported
                   if _part(m) and _part(i) and LAYER[_part(i)] > LAYER[_part(m)])
    assert wrong == []


def test_core_and_runtime_import_nothing_but_themselves():
    wrong = sorted(f"{m} -> {i}" for m, imported in _graph(in_functions=True).items() for i in imported
                   if _part(m) in SELF_CONTAINED and _part(i) not in (_part(m), None))
    assert wrong == []


def test_the_layout_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The layer check is not vacuous: core importing the CLI is caught."""
    graph = _graph(in_functions=True)
    graph["lzo_bench.core.rng"] = graph["lzo_bench.core.rng"] | {"lzo_bench.cli.common"}
    monkeypatch.setattr(f"{__name__}._graph", lambda in_functions: graph)
    with pytest.raises(AssertionError):
        test_imports_go_down_the_layers_only()
    with pytest.raises(AssertionError):
        test_core_and_runtime_import_nothing_but_themselves()


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_each_folder_says_in_its_docstring_what_lives_there(folder):
    init = PACKAGE / folder / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc, f"lzo_bench/{folder}/__init__.py has no docstring"
    modules = sorted(p.stem for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__")
    unnamed = [m for m in modules if m not in doc]
    assert unnamed == [], f"lzo_bench/{folder}/__init__.py's docstring does not name {unnamed}"


def test_files_hold_one_idea_each():
    """No Python module over 400 lines, no kernel source over 700."""
    big = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_PY_LINES]
    big += [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in KERNELS.iterdir()
            if p.suffix in {".h", ".cpp", ".cu", ".cuh"} and (n := len(p.read_text().splitlines())) > MAX_KERNEL_LINES]
    assert big == []


@pytest.mark.parametrize("name", lzo_bench.PUBLIC)
def test_the_public_api_keeps_its_paths(name):
    module, attr = name.split(":")
    assert getattr(importlib.import_module(module), attr) is not None


def test_nothing_points_outside_the_repository():
    """Design references cite docs/ARCHITECTURE.md, which a clone carries, never a file beside it."""
    root = PACKAGE.parent
    files = [p for d in ("lzo_bench", "kernels", "tests", "benchmarks", "examples", "docs", "profiles") for p in (root / d).rglob("*")
             if p.suffix in {".py", ".h", ".cpp", ".cu", ".cuh", ".sh", ".md", ".toml"}]
    files += [root / "README.md", root / "BENCHMARKS.md"]
    marker = "../" + "shared"
    wrong = [str(p.relative_to(root)) for p in files if p.is_file() and (marker in p.read_text() or "DESIGN" + ".md" in p.read_text())]
    assert wrong == []


def test_every_folder_of_the_package_is_packaged():
    """A wheel holds only the packages pyproject.toml lists: a new folder left out would be missing there."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders - listed == set()
