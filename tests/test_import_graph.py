"""The package's import structure: every module imports on its own, and the graph of top-level imports has no cycle.

The graph counts what runs when a module is imported: module-level ``import`` / ``from ... import`` statements
(also inside a module-level ``try`` or ``if``), not those inside functions and not those under
``if TYPE_CHECKING:``. ``from pkg import name`` is an arrow to ``pkg.name`` when that is a module, else to ``pkg``
(its ``__init__``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "twostream"


def package_modules() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package (packages by their ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run at import time (module level, through ``if`` / ``try`` blocks)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for handler in node.handlers:
                    walk(handler.body)
                walk(node.orelse)
                walk(node.finalbody)

    walk(tree.body)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules of the package it imports at import time}``."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in top_level_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package of this module, up level - 1
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\ntry:\n    import z\nexcept ImportError:\n    pass\n"
                     "def f():\n    import w\n")
    assert [n.names[0].name for n in top_level_imports(tree)] == ["x", "z"]


def test_no_import_cycle_among_the_package_modules():
    modules = package_modules()
    graph = import_graph(modules)
    assert sum(len(v) for v in graph.values()) > len(modules)  # the parser sees the imports at all
    assert graph["twostream.models.upsnet"] >= {"twostream.models.segmenter_base"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_segmenter_contract_imports_no_adapter():
    graph = import_graph(package_modules())
    adapters = {"twostream.models.upsnet", "twostream.models.hf_segmenter", "twostream.models.d2_segmenter"}
    assert not graph["twostream.models.segmenter_base"] & (adapters | {"twostream.models.segmenter"})
    for adapter in adapters:
        assert "twostream.models.segmenter_base" in graph[adapter]
        assert "twostream.models.segmenter" not in graph[adapter]


def test_every_module_imports_alone():
    """Each module imported first, into an interpreter holding no module of the package (third-party modules stay
    loaded between them: only the package's own import order is under test)."""
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'twostream' or m.startswith('twostream.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script, *package_modules()], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# Layers, bottom up (DESIGN.md): a module imports from its own layer and those below, at any depth (lazy imports in
# functions included). Top-level parts not listed here are not constrained by this test.
LAYERS = [("config", "logger"), ("data",), ("graph",), ("models",), ("engine",), ("inference", "viz"),
          ("infer_outputs", "benchmark", "cli")]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_from_a_layer_above_it():
    level = {part: i for i, parts in enumerate(LAYERS) for part in parts}
    upward = set()
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for target in targets:
                if target.startswith("twostream.") and _part(name) in level and _part(target) in level \
                        and level[_part(target)] > level[_part(name)]:
                    upward.add((name, ".".join(target.split(".")[:2])))
    assert not upward, f"imports from a layer above: {sorted(upward)}"
