"""The project's architecture rules, checked on the source with ``ast`` (nothing is imported, no network).

Scanned: every ``.py`` file under service/ (but not the generated stubs in service/v1), training/, bench/,
scripts/ and deploy/, and the repository root's own ``.py`` files; tests/ is not scanned. Each file is a
module named by its path (``service/core/engine.py`` -> ``service.core.engine``, ``pkg/__init__.py`` ->
``pkg``). Every ``import`` and ``from ... import`` statement counts, at module level or inside functions
and classes, relative ones resolved against the file's package.

* ``import a.b.c`` imports ``a.b.c`` and, implicitly, its packages ``a`` and ``a.b``;
* ``from a.b import x`` imports ``a.b.x`` when that is a module of the project, else ``a.b`` (the name is
  read from the package's ``__init__``); ``a`` (and ``a.b`` in the first case) implicitly.

The rules (one test each, each failure lists every offender):

* no import cycle among the project's modules (explicit and implicit imports, except those under
  ``if TYPE_CHECKING:``, and except a module's implicit import of the packages it lies in, which Python
  has always imported before the module runs);
* the serving core (service/core, and service/inference shared with training) imports no transport,
  training or client code (CORE_MUST_NOT_IMPORT);
* the bundle contract (service/contract) imports no torch, grpc or onnxruntime, and nothing else of the
  project;
* training/ imports from service/ only TRAINING_MAY_IMPORT_FROM_SERVICE;
* the server side (the core and service/front) never imports the client or load generation;
* no module is longer than MAX_LINES lines.

The layering rules look at what a module names itself (explicit imports, ``TYPE_CHECKING`` ones
included: a dependency in annotations is a dependency all the same), not at what those modules import
in turn.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("service", "training", "bench", "scripts", "deploy")  # plus the root's own .py files
NOT_SCANNED = ("service/v1",)  # generated gRPC stubs

MAX_LINES = 500

# What training/ may import from service/: the bundle contract and the shared decoding (the module that
# will also hold the shared onnxruntime session builder may be service.inference). Prefixes: a listed
# package allows its modules.
TRAINING_MAY_IMPORT_FROM_SERVICE = ("service.contract", "service.inference")

# The serving core, and the server side (core + gRPC front end). service.inference, the decoding and
# onnxruntime session code shared by training and serving, runs in the server too, so the core's rules
# hold for it (a package that does not exist yet matches nothing).
SERVING_CORE = ("service.core", "service.inference")
SERVER_SIDE = (*SERVING_CORE, "service.front")

# Prefixes of what the serving core must not import ("grpc_" is any grpc_* distribution: grpc_health, ...).
CORE_MUST_NOT_IMPORT = (
    "grpc", "grpc_", "google.rpc", "torch", "training", "prometheus_client",
    "service.front", "service.client", "service.loadgen", "service.v1",
)
CONTRACT_MUST_NOT_IMPORT = ("torch", "grpc", "grpc_", "onnxruntime")
SERVER_MUST_NOT_IMPORT = ("service.client", "service.loadgen")


@dataclass(frozen=True)
class Import:
    """One imported module as written in ``module``'s source."""

    module: str  # the importing module
    line: int
    names: tuple[str, ...]  # what the statement may import, most specific first (see _imported)
    explicit: bool  # False: only a package above what was named
    type_checking: bool  # under ``if TYPE_CHECKING:``


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> Iterator[Path]:
    yield from sorted(ROOT.glob("*.py"))
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel == skip or rel.startswith(skip + "/") for skip in NOT_SCANNED):
                yield path


@functools.cache
def _project() -> tuple[dict[str, Path], dict[str, ast.Module]]:
    files = {_module_name(path): path for path in _source_files()}
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in files.items()}
    return files, trees


@functools.cache
def _known_modules() -> frozenset[str]:
    """The scanned modules and the unscanned ones (stubs), so that ``from service import v1`` resolves."""
    files, _ = _project()
    unscanned = {_module_name(path) for skip in NOT_SCANNED for path in (ROOT / skip).rglob("*.py")}
    return frozenset(files) | unscanned


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in ``tree`` with whether it lies under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_checking
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), type_checking)
        else:
            yield from _statements(node, type_checking)


def _packages_of(name: str) -> list[str]:
    """``a.b.c`` -> [``a``, ``a.b``]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: Iterable[str],
              type_checking: bool) -> Iterator[Import]:
    known = set(modules)
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield Import(module, node.lineno, (alias.name,), True, type_checking)
            for package in _packages_of(alias.name):
                yield Import(module, node.lineno, (package,), False, type_checking)
        return
    base = node.module or ""
    if node.level:  # relative: against the file's package (a package's __init__ is its own package)
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    named_package = False
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if candidate in known:
            yield Import(module, node.lineno, (candidate,), True, type_checking)
        elif base in known or alias.name == "*":
            named_package = True
        else:  # outside the project: the name may be a module or an attribute
            yield Import(module, node.lineno, (candidate, base), True, type_checking)
    if named_package:
        yield Import(module, node.lineno, (base,), True, type_checking)
    else:
        yield Import(module, node.lineno, (base,), False, type_checking)
    for package in _packages_of(base):
        yield Import(module, node.lineno, (package,), False, type_checking)


@functools.cache
def _imports() -> tuple[Import, ...]:
    files, trees = _project()
    out: list[Import] = []
    for module, tree in trees.items():
        is_package = files[module].name == "__init__.py"
        for node, type_checking in _statements(tree):
            out.extend(_imported(module, is_package, node, _known_modules(), type_checking))
    return tuple(out)


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    """``name`` is one of ``prefixes`` or lies inside one; a prefix ending in "_" matches any top-level
    name that starts with it."""
    return any(name.startswith(p) if p.endswith("_") else name == p or name.startswith(p + ".") for p in prefixes)


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _offenders(packages: Iterable[str], bad: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """``path:line module -> name`` for every explicit import by a module in ``packages`` of a name
    matching ``bad`` and not ``allowed``."""
    files, _ = _project()
    bad, allowed = tuple(bad), tuple(allowed)
    found = set()
    for imp in _imports():
        if not imp.explicit or not any(_inside(imp.module, p) for p in packages):
            continue
        hits = [n for n in imp.names if _matches(n, bad) and not _matches(n, allowed)]
        if hits:
            note = " (under TYPE_CHECKING)" if imp.type_checking else ""
            found.add((str(files[imp.module].relative_to(ROOT)), imp.line, f"{imp.module} -> {hits[0]}{note}"))
    return [f"{path}:{line} {what}" for path, line, what in sorted(found)]


def _graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (see the module docstring)."""
    files, _ = _project()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for imp in _imports():
        if imp.type_checking:
            continue
        target = imp.names[0]
        if target not in files or target == imp.module:
            continue
        if not imp.explicit and _inside(imp.module, target):  # a package the importer itself lies in
            continue
        graph[imp.module].add(target)
    return graph


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` that hold a cycle (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in sorted(graph):
        if root in index:
            continue
        enter(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    enter(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)
    return components


def _path(graph: dict[str, set[str]], within: set[str], start: str, end: str) -> list[str]:
    """A shortest path ``[start, ..., end]`` inside ``within`` (breadth-first)."""
    parents = {start: start}
    frontier = [start]
    while frontier and end not in parents:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & within):
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    path = [end]
    while path[-1] != start:
        path.append(parents[path[-1]])
    return path[::-1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles ``[a, b, ..., a]``: for every import inside a strongly connected component, the shortest
    cycle through it, each cycle once (rotated to start at its first module)."""
    found = set()
    for component in _components(graph):
        for node in component:
            for child in graph[node] & component:
                cycle = [node] if child == node else [node, *_path(graph, component, child, node)[:-1]]
                first = cycle.index(min(cycle))
                found.add(tuple(cycle[first:] + cycle[:first]))
    return sorted([*cycle, cycle[0]] for cycle in found)


def _report(what: str, offenders: list[str]) -> str:
    return f"{len(offenders)} {what}:\n  " + "\n  ".join(offenders)


# -- the scanner itself ------------------------------------------------------------------------


def test_the_scanner_sees_the_project():
    files, _ = _project()
    assert {"service.core.engine", "service.front.server", "service.contract", "service.loadgen.bench",
            "training"} <= set(files)
    assert not any(_inside(name, "service.v1") or _inside(name, "tests") for name in files)
    assert any(_inside(target, "service.core") for target in _graph()["service.core.engine"])


def test_cycles_are_found_and_reported_as_paths():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"},
             "g": {"h"}, "h": {"g", "i"}, "i": {"h"}}
    assert _cycles(graph) == [["a", "b", "c", "a"], ["e", "e"], ["g", "h", "g"], ["h", "i", "h"]]


def test_relative_and_package_imports_resolve():
    tree = ast.parse("from . import b\nfrom .b import name\nfrom .. import other\nimport pkg.sub.b\n"
                     "if TYPE_CHECKING:\n    from pkg.sub import c\n")
    known = {"pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.other"}
    found = [imp for node, tc in _statements(tree) for imp in _imported("pkg.sub.a", False, node, known, tc)]
    explicit = [(imp.names[0], imp.type_checking) for imp in found if imp.explicit]
    assert explicit == [("pkg.sub.b", False), ("pkg.sub.b", False), ("pkg.other", False), ("pkg.sub.b", False),
                        ("pkg.sub.c", True)]
    assert {imp.names[0] for imp in found if not imp.explicit} == {"pkg", "pkg.sub"}


# -- the rules ---------------------------------------------------------------------------------


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, _report("import cycles", [" → ".join(cycle) for cycle in cycles])


def test_serving_core_imports_no_transport_training_or_client():
    offenders = _offenders(SERVING_CORE, CORE_MUST_NOT_IMPORT)
    assert not offenders, _report("imports the serving core (service/core, service/inference) must not make", offenders)


def test_contract_imports_no_runtime_and_nothing_else_of_the_project():
    files, _ = _project()
    project = sorted({name.split(".")[0] for name in files})
    offenders = _offenders(["service.contract"], [*CONTRACT_MUST_NOT_IMPORT, *project], allowed=["service.contract"])
    assert not offenders, _report("imports the bundle contract (service/contract) must not make", offenders)


def test_training_imports_only_the_contract_and_shared_decoding_from_service():
    offenders = _offenders(["training"], ["service"], allowed=TRAINING_MAY_IMPORT_FROM_SERVICE)
    assert not offenders, _report(
        f"imports from service/ by training/ (allowed: {', '.join(TRAINING_MAY_IMPORT_FROM_SERVICE)})", offenders)


def test_server_side_never_imports_client_or_load_generation():
    offenders = _offenders(SERVER_SIDE, SERVER_MUST_NOT_IMPORT)
    assert not offenders, _report("imports of the client or load generation by the server side", offenders)


def test_no_module_over_the_line_limit():
    files, _ = _project()
    lengths = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in files.values()}
    offenders = sorted(f"{path.relative_to(ROOT)}: {n} lines" for path, n in lengths.items() if n > MAX_LINES)
    assert not offenders, _report(f"modules over {MAX_LINES} lines (tests/ and service/v1 aside)", offenders)
