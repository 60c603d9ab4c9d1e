"""No import circle among metakd's modules (issue 32).

The graph is read from the source with ``ast``, nothing is imported: an edge A -> B for every
``import``/``from ... import`` in A that names module B of the package (``from . import data``
names ``metakd.data``; ``from . import __version__`` names the package ``metakd``). Imports
under ``if TYPE_CHECKING:`` are not edges. An import at module level runs when A is imported;
one inside a function (a lazy import) runs when the function is called. A circle of module-level
imports makes the import order matter (a half-initialised module); a lazy one hides a
dependency that goes both ways. Neither is allowed: a module that two others need moves down.

``python tests/test_import_graph.py`` prints the lazy imports between metakd's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metakd"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The package modules an import statement of ``module`` names (each the longest known prefix)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")[: None if is_package else -1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
        names = submodules + ([source] if len(submodules) < len(node.names) else [])
    out = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(module_level, lazy)``: for each metakd module, the metakd modules it imports at module
    level, and those it imports only inside functions."""
    modules = _modules()
    eager: dict[str, set[str]] = {m: set() for m in modules}
    lazy: dict[str, set[str]] = {m: set() for m in modules}

    def visit(module: str, node: ast.AST, is_package: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else eager)[module] |= _targets(module, child, is_package, modules)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(module, ast.Module(body=child.orelse, type_ignores=[]), is_package, in_function)
            else:
                visit(module, child, is_package,
                      in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for module, path in modules.items():
        visit(module, ast.parse(path.read_text(encoding="utf-8")), path.name == "__init__.py", False)
    for module in modules:
        lazy[module] -= eager[module]
    return eager, lazy


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _both(eager: dict[str, set[str]], lazy: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: eager.get(m, set()) | lazy.get(m, set()) for m in set(eager) | set(lazy)}


def test_the_graph_sees_known_edges():
    eager, lazy = import_graph()
    assert "metakd.distiller" in eager["metakd"]  # from .distiller import MetaDistiller
    assert "metakd.data" in eager["metakd.training"]  # from . import data as data_mod
    assert "metakd" not in eager["metakd.training"]
    assert "metakd" in eager["metakd.cli"]  # from . import __version__
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_at_module_level():
    eager, _ = import_graph()
    assert cycles(eager) == []


def test_no_import_cycle_through_lazy_imports():
    """A function-level import that closes a circle is a dependency both ways all the same."""
    eager, lazy = import_graph()
    closing = sorted((a, b) for a, targets in lazy.items() for b in targets
                     if any(a in c and b in c for c in cycles(_both(eager, lazy))))
    assert cycles(_both(eager, lazy)) == [], f"lazy imports in a circle: {closing}"


if __name__ == "__main__":
    eager, lazy = import_graph()
    print("module-level cycles:", cycles(eager))
    print("cycles with lazy imports:", cycles(_both(eager, lazy)))
    for module in sorted(lazy):
        if lazy[module]:
            print(f"{module} (lazy): {', '.join(sorted(lazy[module]))}")
