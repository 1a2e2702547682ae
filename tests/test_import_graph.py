"""No import cycles inside liverlab, counting imports made inside functions (issue 17).

Every module under ``liverlab/`` is parsed with ``ast`` (nothing is
imported), every import of a liverlab module is collected, wherever it sits:
at module level, inside a function or method, inside ``try`` or ``if``.
Function-level imports are counted because they are where cycles hide: Python
tolerates ``a -> b -> a`` when one side imports lazily, tools that read only
module-level imports do not see it, and the next refactor that hoists the
import breaks start-up.

Imports under ``if TYPE_CHECKING:`` are left out on purpose: they never run,
so they cannot take part in an import-order failure, and importing a type
for an annotation in both directions is the standard way to type two modules
that refer to each other (import-linter's ``exclude_type_checking_imports``
makes the same choice). Dynamic imports (``importlib.import_module`` of a
computed name, as in ``liverlab/data/__init__.py``) are not visible to
``ast`` and not counted.

``from liverlab.x import name`` is an edge to ``liverlab.x.name`` when that is
a module, else to ``liverlab.x``; relative imports are resolved against the
importing module's package. Importing a submodule is not counted as
importing its parent packages (their ``__init__`` files are tiny here).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "liverlab"
ROOT = "liverlab"


@dataclass(frozen=True)
class Import:
    """One import of a liverlab module by another."""

    source: str
    target: str
    line: int
    in_function: bool
    type_checking: bool


def module_names(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package (``__init__`` = the package)."""
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [ROOT, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _known(name: str, modules: Iterable[str]) -> str | None:
    """The longest prefix of ``name`` that is a known module (``liverlab.a.b.Thing`` -> ``liverlab.a.b``)."""
    mods = set(modules)
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in mods:
            return cand
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool, modules: set[str]) -> None:
        self.name, self.modules = name, modules
        self.package = name if is_package else name.rpartition(".")[0]
        self.depth = 0  # > 0 inside a function or method body
        self.tc = 0  # > 0 inside `if TYPE_CHECKING:`
        self.found: list[Import] = []

    def _add(self, target: str | None, node: ast.stmt) -> None:
        if target is not None and target != self.name:
            self.found.append(Import(self.name, target, node.lineno, self.depth > 0, self.tc > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.tc += 1
        for child in node.body:
            self.visit(child)
        self.tc -= 1
        for child in node.orelse:  # the `else:` of TYPE_CHECKING does run
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                self._add(_known(alias.name, self.modules), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            pkg = self.package.split(".")
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if not (base == ROOT or base.startswith(ROOT + ".")):
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else _known(base, self.modules), node)


def imports_in(source: str, name: str, is_package: bool, modules: Iterable[str]) -> list[Import]:
    """The liverlab imports in one module's source text."""
    collector = _Collector(name, is_package, set(modules))
    collector.visit(ast.parse(source))
    return collector.found


def package_imports(package_dir: Path = PACKAGE_DIR) -> list[Import]:
    """Every liverlab -> liverlab import in the package, type-checking ones flagged."""
    mods = module_names(package_dir)
    out: list[Import] = []
    for name, path in mods.items():
        out += imports_in(path.read_text(), name, path.name == "__init__.py", mods)
    return out


def graph_of(imports: Iterable[Import]) -> dict[str, set[str]]:
    """source -> targets, imports under TYPE_CHECKING left out (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.type_checking:
            graph.setdefault(imp.source, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative (no recursion limit), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    out.append(sorted(comp))
    return out


def cycle_in(graph: Mapping[str, Iterable[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first node: ``[a, b, a]``."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise ValueError(f"{component} is not strongly connected")


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One printed cycle per strongly connected component of more than one module."""
    return [cycle_in(graph, c) for c in strongly_connected(graph) if len(c) > 1]


def _describe(cycle: list[str], imports: list[Import]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        where = next(i for i in imports if i.source == a and i.target == b and not i.type_checking)
        kind = "in a function" if where.in_function else "module level"
        steps.append(f"  {a} imports {b} (line {where.line}, {kind})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


# ----------------------------------------------------------------------------- tests


def test_cycle_finder_on_a_literal_graph() -> None:
    graph = {
        "a": {"b"},
        "b": {"c", "d"},
        "c": {"a"},  # a -> b -> c -> a
        "d": {"e"},
        "e": {"d"},  # d -> e -> d, reached from the first cycle but not part of it
        "f": {"f", "a"},  # a self-loop is not an import cycle between modules
        "g": set(),
    }
    components = sorted(c for c in strongly_connected(graph) if len(c) > 1)
    assert components == [["a", "b", "c"], ["d", "e"]]
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # A long chain: the iterative search does not hit the recursion limit.
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)}
    assert cycles(chain) == []
    chain["m5000"] = {"m0"}
    assert len(cycles(chain)[0]) == 5002


def test_collector_resolves_relative_submodule_function_and_type_checking_imports() -> None:
    modules = {"liverlab", "liverlab.errors", "liverlab.data", "liverlab.data.layout", "liverlab.data.cache",
               "liverlab.config", "liverlab.config._base"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy as np\n"
        "from . import layout\n"  # relative, a submodule
        "from ..errors import LiverlabError\n"  # two levels up
        "from liverlab.data import load_slices\n"  # a name of the package, not a module
        "from liverlab.config import _base as b\n"
        "import liverlab.errors\n"
        "if TYPE_CHECKING:\n"
        "    from liverlab.config import ExperimentConfig\n"
        "def f():\n"
        "    from liverlab import config\n"
        "    class C:\n"
        "        def g(self):\n"
        "            import liverlab\n"
    )
    got = {(i.target, i.line, i.in_function, i.type_checking)
           for i in imports_in(source, "liverlab.data.cache", False, modules)}
    assert got == {
        ("liverlab.data.layout", 3, False, False),
        ("liverlab.errors", 4, False, False),
        ("liverlab.data", 5, False, False),
        ("liverlab.config._base", 6, False, False),
        ("liverlab.errors", 7, False, False),
        ("liverlab.config", 9, False, True),
        ("liverlab.config", 11, True, False),
        ("liverlab", 14, True, False),
    }
    # In a package's __init__, `from . import x` is relative to the package itself.
    init = imports_in("from . import cache\n", "liverlab.data", True, modules)
    assert [i.target for i in init] == ["liverlab.data.cache"]


def test_liverlab_has_no_import_cycle() -> None:
    imports = package_imports()
    # The check must see the imports inside functions, or it would miss the cycles they hide.
    assert any(i.in_function for i in imports)
    assert len(module_names()) > 50
    found = cycles(graph_of(imports))
    assert not found, "import cycles inside liverlab:\n" + "\n".join(_describe(c, imports) for c in found)
