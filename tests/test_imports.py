"""The import structure of the project's own code, read from the source (nothing is imported).

Every ``.py`` file under ``singer/`` and ``baselines/`` is parsed with ``ast``. Two rules:

**No import cycles.** Modules are the nodes; every import statement is an edge: at module
level, under ``if``/``try``, and inside functions, because an import inside a function hides a
dependency, it does not remove it. Imports under ``if TYPE_CHECKING:`` never run and are no
edges. An edge goes to the module the statement names: ``import a.b`` and ``from a.b import
name`` → ``a.b``; ``from a import b`` → ``a.b`` when ``b`` is a module, else ``a``. Relative
imports resolve against the importing module's package. A module that imports itself (the
``if __name__ == "__main__":`` re-import of a command) is no edge.

Packages: Python runs a package's ``__init__`` before any module in it, so importing ``a.b.c``
is also an edge to ``a.b`` and ``a`` — except to the packages the importing module is itself
in, which are initialised (or being initialised) before it runs. So a package whose
``__init__`` imports its own modules is no cycle as long as they import only each other, while
a module that names its own package (``from singer.audio import ...`` inside
``singer/audio/mel.py``) closes one. ``import_submodules(__name__, __path__, skip=...)`` in a
package's ``__init__`` (``singer.registry``: a plugin package imports all its modules) is an
edge to each of them but the skipped ones, ``conf`` and private ``_`` ones. The registry's
import of the plugin packages by name, at its first lookup, is no edge: it goes from the
registry down to the components that register with it, after they have been imported.

**A lazy import says why.** An import inside a function body carries a comment
``# lazy: <reason>`` on its own line(s) or in the comment lines directly above it; a run of
consecutive imports shares the comment above the first one. The reason starts with one of:

- ``start-up``: the module is slow to import, and the importing module is imported on paths
  that do not need it (``--help`` of a command, a package that merely registers components);
- ``optional``: a package that is not always installed.

Anything else is imported at the top of its module. "It would close an import cycle" is no
reason: the cycle is still there (see the first rule); move code instead.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("singer", "baselines", "analysis", "benchmarks")
LAZY_REASON = re.compile(r"#\s*lazy:\s*(start-up|optional)\b")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: list[tuple[int, str]] = field(default_factory=list)  # (line, imported name)
    # (line, skipped names) of an ``import_submodules(__name__, __path__, skip=...)`` call
    imports_children: list[tuple[int, set[str]]] = field(default_factory=list)
    bare_lazy: list[tuple[int, str]] = field(default_factory=list)  # (line, statement)


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def is_type_checking(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(node: ast.Import | ast.ImportFrom, module: Module) -> list[str]:
    """The fully qualified names a statement imports (a module, or ``module.attribute``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.name.split(".")
        if not module.is_package:
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def imports_submodules(node: ast.stmt) -> set[str] | None:
    """The ``skip`` names of an ``import_submodules(__name__, __path__, skip=(...))`` statement
    (``singer.registry``: a plugin package imports its own modules), else None."""
    call = node.value if isinstance(node, ast.Expr) else None
    if not isinstance(call, ast.Call):
        return None
    func = call.func
    if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) != (
        "import_submodules"
    ):
        return None
    skip = next((k.value for k in call.keywords if k.arg == "skip"), None)
    if skip is None and len(call.args) > 2:
        skip = call.args[2]
    return set(ast.literal_eval(skip)) if skip is not None else set()


def has_lazy_reason(lines: list[str], node: ast.stmt) -> bool:
    """A ``# lazy: <reason>`` comment on the statement's lines or in the comment lines above."""
    if any(LAZY_REASON.search(lines[i - 1]) for i in range(node.lineno, node.end_lineno + 1)):
        return True
    above = node.lineno - 2  # index of the line directly above
    while above >= 0 and lines[above].strip().startswith("#"):
        if LAZY_REASON.search(lines[above]):
            return True
        above -= 1
    return False


def scan(module: Module) -> None:
    """Fill ``module.imports`` (every import but TYPE_CHECKING ones) and ``module.bare_lazy``."""
    source = module.path.read_text(encoding="utf-8")
    lines = source.splitlines()

    def visit_block(body: list[ast.stmt], in_function: bool) -> None:
        covered = False  # whether the previous statement was an import with a reason
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module.imports += [(node.lineno, name) for name in imported_names(node, module)]
                if in_function:
                    covered = covered or has_lazy_reason(lines, node)
                    if not covered:
                        module.bare_lazy.append((node.lineno, ast.get_source_segment(source, node)))
                continue
            covered = False
            if is_type_checking(node):  # its body never runs; an ``else:`` would
                visit_block(node.orelse, in_function)
                continue
            skip = imports_submodules(node)
            if skip is not None:
                module.imports_children.append((node.lineno, skip))
            visit_children(node, in_function)

    def visit_children(node: ast.AST, in_function: bool) -> None:
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for value in ast.iter_fields(node):
            value = value[1]
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                visit_block(value, inner)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        visit_children(item, inner)
            elif isinstance(value, ast.AST):
                visit_children(value, inner)

    visit_block(ast.parse(source, filename=str(module.path)).body, in_function=False)


def load_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name, is_package = module_name(path, root)
            modules[name] = Module(name, path, is_package)
    for module in modules.values():
        scan(module)
    return modules


def prefixes(name: str) -> list[str]:
    """``a.b.c`` → ``[a, a.b]``: the packages a module is in."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """``{module: {imported first-party module: line of the first such import}}``."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        inside = set(prefixes(module.name)) | {module.name}
        for line, name in module.imports:
            # A name that is not a module is an attribute of its longest module prefix.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module.name:
                graph[module.name].setdefault(name, line)
                for package in prefixes(name):
                    if package in modules and package not in inside:
                        graph[module.name].setdefault(package, line)
        for line, skip in module.imports_children:
            for name in modules:
                package, _, child = name.rpartition(".")
                if package == module.name and not child.startswith("_"):
                    if child not in skip and child != "conf":
                        graph[module.name].setdefault(name, line)
    return graph


def cyclic_groups(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The groups of modules that reach each other (strongly connected, more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(groups, key=min)


def shortest_cycle(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """``[a, b, ..., a]``: the shortest way from the group's first module back to itself."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        if start in graph[node]:
            return paths[node] + [start]
        for target in sorted(graph[node]):
            if target in group and target not in paths:
                paths[target] = paths[node] + [target]
                frontier.append(target)
    raise AssertionError(f"{sorted(group)} holds no cycle")


def describe(group: set[str], graph: dict[str, dict[str, int]], modules) -> str:
    cycle = shortest_cycle(graph, group)
    steps = [
        f"{a} ({modules[a].path.relative_to(ROOT)}:{graph[a][b]}) → {b}"
        for a, b in zip(cycle, cycle[1:])
    ]
    return f"{len(group)} modules in a cycle: {', '.join(sorted(group))}; one way round:\n    " + (
        "\n    ".join(steps)
    )


def test_no_import_cycles():
    modules = load_modules()
    graph = import_graph(modules)
    groups = cyclic_groups(graph)
    assert not groups, "import cycles (each step: importer (file:line) → imported):\n  " + (
        "\n  ".join(describe(group, graph, modules) for group in groups)
    )


def test_lazy_imports_say_why():
    bare = [
        f"{module.path.relative_to(ROOT)}:{line}: {statement.splitlines()[0]}"
        for module in load_modules().values()
        for line, statement in module.bare_lazy
    ]
    assert not bare, (
        "imports inside functions without a '# lazy: start-up|optional ...' comment "
        "(see this file's docstring; otherwise import at the top of the module):\n  "
        + "\n  ".join(bare)
    )


def test_the_rules_on_a_small_package(tmp_path):
    """The checker itself: edges, packages, TYPE_CHECKING and lazy comments."""
    files = {
        "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
        "pkg/a.py": (
            "from typing import TYPE_CHECKING\n"
            "from pkg import b\n"
            "if TYPE_CHECKING:\n"
            "    from pkg.c import C\n"
            "A = 1\n"
        ),
        "pkg/b.py": (
            "def f():\n"
            "    # lazy: start-up: slow\n"
            "    # (more words)\n"
            "    import json\n"
            "    from .c import C\n"
            "\n"
            "    print()\n"
            "    import os\n"
            "    import re  # lazy: optional\n"
            "B = 2\n"
        ),
        "pkg/c.py": (
            "import pkg.a\n"
            "class K:\n"
            "    def m(self):\n"
            "        if True:\n"
            "            from pkg import A  # lazy: cycle is no reason\n"
        ),
        "pkg/sub/__init__.py": (
            "from singer.registry import import_submodules\n"
            "import_submodules(__name__, __path__, skip=('e',))\n"
        ),
        "pkg/sub/d.py": "from ..a import A\n",
        "pkg/sub/e.py": "",
        "other/__init__.py": "",
        "other/x.py": "import pkg.sub.d\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = load_modules(tmp_path, ("pkg", "other"))
    graph = import_graph(modules)
    assert graph["pkg"] == {"pkg.a": 1, "pkg.b": 2}
    assert graph["pkg.a"] == {"pkg.b": 2}  # the TYPE_CHECKING import is no edge
    assert graph["pkg.b"] == {"pkg.c": 5}
    assert graph["pkg.c"] == {"pkg.a": 1, "pkg": 5}
    assert graph["pkg.sub"] == {"pkg.sub.d": 2}  # its import_submodules, less the skipped e
    assert graph["pkg.sub.d"] == {"pkg.a": 1}  # pkg, its own package, has run before it
    assert graph["other.x"] == {"pkg.sub.d": 1, "pkg.sub": 1, "pkg": 1}  # the __init__s run too
    assert cyclic_groups(graph) == [{"pkg", "pkg.a", "pkg.b", "pkg.c"}]
    assert shortest_cycle(graph, {"pkg", "pkg.a", "pkg.b", "pkg.c"}) == [
        "pkg",
        "pkg.b",
        "pkg.c",
        "pkg",
    ]
    assert [line for line, _ in modules["pkg.b"].bare_lazy] == [8]
    assert [line for line, _ in modules["pkg.c"].bare_lazy] == [5]
