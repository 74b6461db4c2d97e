"""The package's layout rules (issue 20), checked on the source so that they hold as the code grows.

Each file answers one question: no module over 500 lines; modules talk through public names only (nothing
starting with `_` is imported from another module); and the import graph has no cycle, counting the imports
made inside functions too (a lazy import that closes a circle is a circle all the same).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "glip_label"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported package module, names taken from it, line) for each import of a glip_label module."""
    is_package = path.name == "__init__.py"
    result = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            result += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "glip_label"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "glip_label":
                result.append((target, [a.name for a in node.names], node.lineno))
    return result


def _resolve(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The modules an import really loads: `from pkg import sub` loads pkg.sub when sub is a module."""
    loaded = [target] if target in modules else []
    loaded += [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return loaded


def test_no_module_is_longer_than_500_lines():
    too_long = {name: n for name, path in _modules().items()
                if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert too_long == {}


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    private = []
    for module, path in modules.items():
        for target, names, line in _imports(module, path):
            private += [f"{module}:{line} imports {target}.{n}" for n in names
                        if n.startswith("_") and not n.endswith("__") and f"{target}.{n}" not in modules]
            if any(part.startswith("_") and part != "__init__" for part in target.split(".")):
                private.append(f"{module}:{line} imports private module {target}")
    assert private == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (a list of modules closing on the first), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for target, names, _line in _imports(module, path):
            edges.update(m for m in _resolve(target, names, modules) if m != module)
        # Importing a package's module runs the package's __init__ first; a package's own __init__ is
        # left out of its modules' edges, as re-exporting a submodule there is no circle of ours.
        graph[module] = {m for m in edges if not module.startswith(m + ".")}
    return graph


def test_the_import_graph_has_no_cycle():
    assert _cycle(_import_graph()) is None


@pytest.mark.parametrize(("graph", "has_cycle"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a2"}, "a2": set(), "b": {"a"}}, False),
])
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (_cycle(graph) is not None) == has_cycle
