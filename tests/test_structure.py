"""The shape of ``src/gradwatch`` (issue 15): no import cycles, no private name imported across modules, no function
above cyclomatic complexity 15, and a ``Watcher`` class under 250 lines.

The checkers are plain functions over a source tree, so the self-tests at the bottom run them on small synthetic
packages written to ``tmp_path`` and prove that each one reports a planted violation (and stays quiet on clean code).

What counts as an import edge:

* every ``import`` and ``from ... import`` anywhere in a module: at the top, inside functions and methods, inside
  ``try``/``if`` blocks, and inside ``if TYPE_CHECKING:`` blocks. ``TYPE_CHECKING`` imports never run, but they are
  still a dependency of the module's design: a cycle closed only by a ``TYPE_CHECKING`` import is usually a type that
  lives in the wrong module, so it counts (``_ImportVisitor`` marks such edges, and the cycle report says so);
* relative imports are resolved against the importing module's package (a package ``__init__`` is its own package);
* ``from pkg import name`` is an edge to the submodule ``pkg.name`` when that module exists, else an edge to ``pkg``
  (its ``__init__``) for the name ``name``;
* ``import a.b.c`` is an edge to ``a.b.c``;
* the implicit initialisation of a module's parent packages is not an edge (every submodule would otherwise point at
  its package's ``__init__``); an explicit import of a name from a package's ``__init__`` is.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC_ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gradwatch"
MAX_COMPLEXITY = 15
MAX_WATCHER_LINES = 250  # strictly fewer than this many


# ---------------------------------------------------------------------------------------------------------------------
# Discovery and import edges
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    names: tuple[str, ...]  # the names taken from ``target`` (empty when the module itself is imported)
    path: Path
    lineno: int
    type_checking: bool
    local: bool  # inside a function or method

    def where(self) -> str:
        notes = [n for n, on in (("TYPE_CHECKING", self.type_checking), ("local import", self.local)) if on]
        return f"{self.path}:{self.lineno}" + (f" ({', '.join(notes)})" if notes else "")


def discover_modules(src_root: Path, package: str) -> dict[str, Module]:
    """Every module of ``package`` under ``src_root``, by dotted name; packages by their ``__init__``."""
    pkg_dir = src_root / package
    if not (pkg_dir / "__init__.py").is_file():
        raise FileNotFoundError(f"{pkg_dir} is not a package")
    modules: dict[str, Module] = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(src_root).with_suffix("")
        parts = rel.parts
        # only files reachable through packages (every folder on the way has an __init__.py)
        if any(not (src_root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        if parts[-1] == "__init__":
            modules[".".join(parts[:-1])] = Module(".".join(parts[:-1]), path, True)
        else:
            modules[".".join(parts)] = Module(".".join(parts), path, False)
    return modules


def _is_type_checking_test(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _ImportVisitor(ast.NodeVisitor):
    """Collects every import statement with its context (``if TYPE_CHECKING:`` block, function body)."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool, bool]] = []
        self._type_checking = 0
        self._function = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking_test(node.test):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _visit_function(self, node: ast.AST) -> None:
        self._function += 1
        self.generic_visit(node)
        self._function -= 1

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function
    visit_Lambda = _visit_function

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._type_checking > 0, self._function > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self._type_checking > 0, self._function > 0))


def _resolve_relative(module: Module, level: int, name: str | None) -> str | None:
    """The absolute name ``from <level dots><name>`` means inside ``module``; ``None`` if it leaves the top package."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".") if package else []
    up = level - 1
    if up >= len(parts):
        return None
    base = parts[: len(parts) - up]
    return ".".join([*base, name]) if name else ".".join(base)


def _deepest_module(dotted: str, modules: dict[str, Module]) -> str | None:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def module_edges(module: Module, modules: dict[str, Module]) -> list[Edge]:
    """The import edges from ``module`` to other modules of the same tree (``modules``)."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    visitor = _ImportVisitor()
    visitor.visit(tree)
    edges: list[Edge] = []
    for node, type_checking, local in visitor.found:
        targets: list[tuple[str, tuple[str, ...]]] = []
        if isinstance(node, ast.Import):
            targets = [(t, ()) for alias in node.names if (t := _deepest_module(alias.name, modules)) is not None]
        else:
            base = _resolve_relative(module, node.level, node.module) if node.level else node.module
            if base in modules:  # else outside the tree (torch, typing, ...)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append((submodule, ()) if submodule in modules else (base, (alias.name,)))
        edges.extend(Edge(module.name, target, names, module.path, node.lineno, type_checking, local)
                     for target, names in targets if target != module.name)
    return edges


def collect_edges(src_root: Path, package: str) -> tuple[dict[str, Module], list[Edge]]:
    modules = discover_modules(src_root, package)
    edges = [e for m in modules.values() for e in module_edges(m, modules)]
    return modules, edges


# ---------------------------------------------------------------------------------------------------------------------
# Checks: each returns a list of human-readable offences (empty: clean)
# ---------------------------------------------------------------------------------------------------------------------


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; the components in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _shortest_cycle_through(start: str, nodes: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside ``nodes`` (breadth first, deterministic)."""
    parents: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ()) & nodes):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in seen:
                    seen.add(w)
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # cannot happen inside a strongly connected component


def find_cycles(edges: Iterable[Edge]) -> list[str]:
    """One report per group of mutually importing modules (a strongly connected component of the import graph).

    A report's first line names the group's modules; then, for each module of the group, a shortest cycle through it
    (duplicates dropped), every hop with the file and line of the import(s) behind it.
    """
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
        where.setdefault((e.source, e.target), []).append(e)
    reports = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue  # self-edges are never recorded
        cycles: dict[tuple[str, ...], None] = {}
        for node in component:
            cycle = _shortest_cycle_through(node, set(component), graph)[:-1]
            turn = cycle.index(min(cycle))
            cycles[tuple(cycle[turn:] + cycle[:turn])] = None
        lines = [f"import cycle among {', '.join(component)}:"]
        for cycle in sorted(cycles, key=lambda c: (len(c), c)):
            closed = [*cycle, cycle[0]]
            lines.append("  " + " -> ".join(closed))
            lines.extend(f"      {a} -> {b}  [{'; '.join(dict.fromkeys(e.where() for e in where[(a, b)]))}]"
                         for a, b in itertools.pairwise(closed))
        reports.append("\n".join(lines))
    return reports


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def find_private_imports(modules: dict[str, Module], edges: Iterable[Edge]) -> list[str]:
    """Underscore names taken from another module of the tree: by ``from m import _name`` or by ``m._name`` on a
    module bound by an import (importing a private *module* is fine, and so are dunder names)."""
    out = []
    for e in edges:
        for name in e.names:
            if _is_private(name):
                out.append(f"{e.source} imports {name} from {e.target}  [{e.where()}]")
    out.extend(_private_attribute_access(modules))
    return sorted(out)


def _private_attribute_access(modules: dict[str, Module]) -> Iterator[str]:
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        aliases: dict[str, str] = {}  # a local name bound to a module of the tree -> that module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _resolve_relative(module, node.level, node.module) if node.level else node.module
                for alias in node.names:
                    if base is not None and f"{base}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in modules:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _is_private(node.attr)):
                target = aliases[node.value.id]
                if f"{target}.{node.attr}" not in modules and target != module.name:
                    yield (f"{module.name} uses {node.value.id}.{node.attr} ({node.attr} of {target})  "
                           f"[{module.path}:{node.lineno}]")


def _flatten_blocks(blocks: Iterable[object], prefix: str = "") -> Iterator[tuple[str, object]]:
    """radon's functions, methods, closures and the methods of nested classes, each with a qualified name."""
    from radon.visitors import Class

    for block in blocks:
        name = f"{prefix}{block.name}"
        if isinstance(block, Class):
            yield from _flatten_blocks(block.methods, f"{name}.")
            yield from _flatten_blocks(block.inner_classes, f"{name}.")
        else:
            yield name, block
            yield from _flatten_blocks(block.closures, f"{name}.<locals>.")


def find_complex_functions(modules: dict[str, Module], limit: int) -> list[str]:
    """Every function, method and closure whose cyclomatic complexity (radon) is above ``limit``."""
    from radon.complexity import cc_visit
    from radon.visitors import Class

    out = []
    for module in modules.values():
        top = [b for b in cc_visit(module.path.read_text(encoding="utf-8"))
               if isinstance(b, Class) or not b.is_method]  # cc_visit also lists the methods; they come via classes
        for name, block in _flatten_blocks(top):
            if block.complexity > limit:
                out.append(f"{module.name}.{name}: complexity {block.complexity}  [{module.path}:{block.lineno}]")
    return sorted(out)


def class_spans(modules: dict[str, Module], class_name: str) -> list[tuple[str, int, Path, int]]:
    """(module, lines, path, first line) for every top-level class ``class_name``; the lines include decorators."""
    out = []
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                out.append((module.name, node.end_lineno - first + 1, module.path, first))
    return out


def find_long_classes(modules: dict[str, Module], class_name: str, max_lines: int) -> list[str]:
    spans = class_spans(modules, class_name)
    if not spans:
        return [f"no class {class_name} found"]
    return [f"{m}.{class_name} spans {n} lines (limit: under {max_lines})  [{p}:{first}]"
            for m, n, p, first in spans if n >= max_lines]


# ---------------------------------------------------------------------------------------------------------------------
# The checks on src/gradwatch
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree():
    return collect_edges(SRC_ROOT, PACKAGE)


def test_the_walker_sees_the_package(tree):
    modules, edges = tree
    # a vacuous walk would pass every check below: the package and its known edges must be seen
    assert {"gradwatch", "gradwatch.clipping", "gradwatch.cli", "gradwatch.lightning"} <= set(modules)
    assert len(modules) >= 20
    pairs = {(e.source, e.target) for e in edges}
    assert ("gradwatch", "gradwatch.clipping") in pairs  # `from . import clipping` is an edge to the module
    assert sum(e.local for e in edges) >= 1  # cli.py imports inside its functions


def test_no_import_cycles(tree):
    _, edges = tree
    cycles = find_cycles(edges)
    assert not cycles, f"{len(cycles)} import cycle(s) in src/gradwatch:\n  " + "\n  ".join(cycles)


def test_no_private_name_is_imported_across_modules(tree):
    modules, edges = tree
    found = find_private_imports(modules, edges)
    assert not found, (f"{len(found)} private name(s) used across modules (give the helper a module that owns it "
                       "and a public name there):\n  " + "\n  ".join(found))


def test_no_function_above_complexity_15(tree):
    pytest.importorskip("radon", reason="radon (a dev dependency) measures cyclomatic complexity")
    modules, _ = tree
    found = find_complex_functions(modules, MAX_COMPLEXITY)
    assert not found, (f"{len(found)} function(s) above cyclomatic complexity {MAX_COMPLEXITY} (radon):\n  "
                       + "\n  ".join(found))


def test_watcher_is_under_250_lines(tree):
    modules, _ = tree
    found = find_long_classes(modules, "Watcher", MAX_WATCHER_LINES)
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------------------------------------------------
# Self-tests: the checkers report planted violations and nothing on clean code
# ---------------------------------------------------------------------------------------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


CLEAN = {
    "pkg/__init__.py": """
        from . import api
        from ._core import Engine
        __version__ = "1"
        """,
    "pkg/api.py": """
        from ._core import Engine
        from ._sub import rules
        from ._sub.rules import Rule
        def make():
            from . import _helpers  # a private *module*: fine
            return Engine(Rule(), _helpers.CONSTANT)
        """,
    "pkg/_core.py": """
        from typing import TYPE_CHECKING
        import os
        if TYPE_CHECKING:
            from ._sub.rules import Rule
        class Engine:
            def __init__(self, rule: "Rule", c) -> None:
                self.rule = rule
        """,
    "pkg/_helpers.py": """
        import torch  # outside the tree: no edge
        CONSTANT = 1
        """,
    "pkg/_sub/__init__.py": """
        from .rules import Rule
        """,
    "pkg/_sub/rules.py": """
        from .. import _helpers
        from .._helpers import CONSTANT
        class Rule:
            pass
        """,
    "pkg/cli.py": """
        def main():
            from . import __version__
            return __version__
        """,
}


def test_self_clean_package_has_no_findings(tmp_path):
    modules, edges = collect_edges(_write_package(tmp_path, CLEAN), "pkg")
    assert set(modules) == {"pkg", "pkg.api", "pkg._core", "pkg._helpers", "pkg._sub", "pkg._sub.rules", "pkg.cli"}
    assert modules["pkg._sub"].is_package
    assert not modules["pkg._sub.rules"].is_package
    pairs = {(e.source, e.target, e.names, e.type_checking, e.local) for e in edges}
    assert pairs == {
        ("pkg", "pkg.api", (), False, False),
        ("pkg", "pkg._core", ("Engine",), False, False),
        ("pkg.api", "pkg._core", ("Engine",), False, False),
        ("pkg.api", "pkg._sub.rules", (), False, False),  # `from ._sub import rules`: the submodule
        ("pkg.api", "pkg._sub.rules", ("Rule",), False, False),
        ("pkg.api", "pkg._helpers", (), False, True),
        ("pkg._core", "pkg._sub.rules", ("Rule",), True, False),
        ("pkg._sub", "pkg._sub.rules", ("Rule",), False, False),
        ("pkg._sub.rules", "pkg._helpers", (), False, False),  # `from .. import _helpers` inside a subpackage
        ("pkg._sub.rules", "pkg._helpers", ("CONSTANT",), False, False),
        ("pkg.cli", "pkg", ("__version__",), False, True),  # a name from the package __init__: an edge to it
    }
    assert find_cycles(edges) == []
    assert find_private_imports(modules, edges) == []
    assert find_long_classes(modules, "Engine", 250) == []


def test_self_relative_imports_resolve_from_a_subpackage_and_its_init(tmp_path):
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "",
        "pkg/_sub/__init__.py": "from . import rules\nfrom .rules import X\nfrom .. import a\n",
        "pkg/_sub/rules.py": "from . import other\nfrom .. import a\nfrom ..a import thing\nX = 1\n",
        "pkg/_sub/other.py": "import pkg.a\nimport pkg._sub.rules as r\nfrom pkg._sub import X\n",
    })
    _, edges = collect_edges(root, "pkg")
    got = sorted((e.source, e.target, e.names) for e in edges)
    assert got == sorted([
        ("pkg._sub", "pkg._sub.rules", ()),        # in an __init__, `.` is the package itself
        ("pkg._sub", "pkg._sub.rules", ("X",)),
        ("pkg._sub", "pkg.a", ()),
        ("pkg._sub.rules", "pkg._sub.other", ()),  # in a submodule, `.` is its package
        ("pkg._sub.rules", "pkg.a", ()),
        ("pkg._sub.rules", "pkg.a", ("thing",)),
        ("pkg._sub.other", "pkg.a", ()),
        ("pkg._sub.other", "pkg._sub.rules", ()),
        ("pkg._sub.other", "pkg._sub", ("X",)),    # a name from the subpackage's __init__
    ])


@pytest.mark.parametrize(("closing_import", "note"), [
    ("from .a import f", ""),                                                    # top level
    ("def g():\n    from .a import f\n    return f", "local import"),             # inside a function
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f", "TYPE_CHECKING"),
    ("import typing\nif typing.TYPE_CHECKING:\n    from . import a", "TYPE_CHECKING"),
])
def test_self_a_planted_cycle_is_reported_with_its_modules(tmp_path, closing_import, note):
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from ._sub import rules\ndef f():\n    pass\n",
        "pkg/_sub/__init__.py": "",
        "pkg/_sub/rules.py": "from .. import b\n",        # `..` from a subpackage module: pkg; b is a module
        "pkg/b.py": closing_import.replace(".a", "pkg.a").replace("from . import a", "from pkg import a") + "\n",
        "pkg/c.py": "from . import a\n",                    # imports into the cycle, not part of it
    })
    _, edges = collect_edges(root, "pkg")
    (report,) = find_cycles(edges)
    assert report.splitlines()[:2] == ["import cycle among pkg._sub.rules, pkg.a, pkg.b:",
                                       "  pkg._sub.rules -> pkg.b -> pkg.a -> pkg._sub.rules"]
    assert "pkg.c" not in report
    assert str(root / "pkg" / "b.py") in report
    if note:
        assert note in report


def test_self_two_cycles_are_both_reported(tmp_path):
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/stats.py": "def f():\n    from .distributed import D\n",
        "pkg/distributed.py": "from .stats import f\nclass D: pass\n",
        "pkg/hooks.py": "from .watcher import W\n",
        "pkg/watcher.py": "from . import hooks\nclass W: pass\n",
    })
    _, edges = collect_edges(root, "pkg")
    cycles = [r.splitlines()[1] for r in find_cycles(edges)]
    assert cycles == ["  pkg.distributed -> pkg.stats -> pkg.distributed", "  pkg.hooks -> pkg.watcher -> pkg.hooks"]


def test_self_every_cycle_of_a_tangle_is_named(tmp_path):
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "from . import a, c\n",   # a <-> b, and b -> c -> d -> b
        "pkg/c.py": "from . import d\n",
        "pkg/d.py": "from . import b\n",
    })
    _, edges = collect_edges(root, "pkg")
    (report,) = find_cycles(edges)
    lines = report.splitlines()
    assert lines[0] == "import cycle among pkg.a, pkg.b, pkg.c, pkg.d:"
    assert [x for x in lines if not x.startswith("      ")][1:] == [
        "  pkg.a -> pkg.b -> pkg.a", "  pkg.b -> pkg.c -> pkg.d -> pkg.b"]
    assert f"pkg.d -> pkg.b  [{root / 'pkg' / 'd.py'}:1]" in report


def test_self_private_names_imported_across_modules_are_named(tmp_path):
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "from ._stats import StatsEngine\nfrom . import _tb_crc\n__version__ = '1'\n",
        "pkg/_stats.py": "_LOW = 1\ndef _foreach_norms(): pass\nclass StatsEngine: pass\n",
        "pkg/_tb_crc.py": "",
        "pkg/_sub/__init__.py": "",
        "pkg/_sub/x.py": (
            "from .._stats import _foreach_norms, StatsEngine\n"
            "from .. import _stats\n"
            "def f():\n"
            "    from pkg._stats import _LOW as low\n"
            "    return _stats._foreach_norms, _stats.StatsEngine, low\n"
        ),
        "pkg/cli.py": "from . import __version__\n",
    })
    modules, edges = collect_edges(root, "pkg")
    found = find_private_imports(modules, edges)
    assert len(found) == 3, found
    assert found[0].startswith("pkg._sub.x imports _LOW from pkg._stats")
    assert found[1].startswith("pkg._sub.x imports _foreach_norms from pkg._stats")
    assert found[2].startswith("pkg._sub.x uses _stats._foreach_norms")
    assert all(str(root / "pkg" / "_sub" / "x.py") in f for f in found)


def test_self_complexity_above_the_limit_is_named(tmp_path):
    pytest.importorskip("radon")
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(15))  # complexity 16
    just_fine = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(14))  # complexity 15
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/m.py": (
            f"def busy(x):\n{branches}\n    return -1\n\n"
            f"def fine(x):\n{just_fine}\n    return -1\n\n"
            "class Outer:\n"
            f"    def method(self, x):\n{textwrap.indent(branches, '    ')}\n        return -1\n"
            "    class Inner:\n"
            f"        def deep(self, x):\n{textwrap.indent(branches, '        ')}\n            return -1\n\n"
            "def host():\n"
            f"    def closure(x):\n{textwrap.indent(branches, '    ')}\n        return -1\n"
            "    return closure\n"
        ),
    })
    modules = discover_modules(root, "pkg")
    found = find_complex_functions(modules, 15)
    assert [f.split(":")[0] for f in found] == [
        "pkg.m.Outer.Inner.deep", "pkg.m.Outer.method", "pkg.m.busy", "pkg.m.host.<locals>.closure",
    ]
    assert all("complexity 16" in f for f in found)
    assert find_complex_functions(modules, 16) == []


def test_self_a_long_class_is_named_and_a_missing_one_fails(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(248))
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/w.py": f"import functools\n\n@functools.total_ordering\nclass Watcher:\n{body}\n",  # 250 lines
        "pkg/v.py": f"class Watcher:\n{body}\n",                                                  # 249 lines
    })
    modules = discover_modules(root, "pkg")
    assert sorted((m, n) for m, n, _, _ in class_spans(modules, "Watcher")) == [("pkg.v", 249), ("pkg.w", 250)]
    (found,) = find_long_classes(modules, "Watcher", 250)
    assert found.startswith("pkg.w.Watcher spans 250 lines")
    assert find_long_classes(modules, "Missing", 250) == ["no class Missing found"]
