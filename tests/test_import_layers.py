"""The package's imports point down its layers only: no import circle, no import of a layer above.

Reads every module with ``ast`` (module-level and function-level imports alike, ``TYPE_CHECKING``
blocks included), so it needs neither Django nor a database. Also runnable on its own, printing
every problem and exiting 1 when there is one::

    python -m tests.test_import_layers
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "django_poolguard"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Bottom to top; a module belongs to the first layer with a prefix naming it or a package above it.
# A module may import its own layer and the layers below, never one above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "django_poolguard._compat",  # the one place touching Django's and psycopg_pool's internals
            "django_poolguard.rules",
            "django_poolguard.conf",
            "django_poolguard.escaping",
            "django_poolguard.exceptions",
            "django_poolguard.signals",
            "django_poolguard.models",
            "django_poolguard.migrations",
        ),
    ),
    ("engine", ("django_poolguard.engine",)),
    ("backends (the ENGINE)", ("django_poolguard.backends",)),
    # The published shapes and this process's pools seen through them: read-only views of the engine
    # that the watchdog's alerts hand to their receivers, below the watchdog.
    ("shapes", ("django_poolguard.fleet.schema", "django_poolguard.fleet.snapshots")),
    ("watchdog", ("django_poolguard.watchdog",)),
    ("fleet", ("django_poolguard.fleet",)),
    ("web and integrations", ("django_poolguard.web", "django_poolguard.integrations")),
    ("surface", ("django_poolguard",)),  # admin, views, urls, middleware, celery, apps, runtime, ...
)

# The only imports allowed to point up, each with its reason.
UPWARD_ALLOWED = {
    ("django_poolguard.backends.postgresql.base", "django_poolguard.runtime"): (
        "the ENGINE's first pool creates the process runtime when AppConfig.ready() did not "
        "(the app not installed, W011), for the one fork handler and exit hook; imported at call time"
    ),
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    in_function: bool
    source_line: str


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, modules: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        candidates = {alias.name for alias in node.names}
    else:
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            anchor = base[: len(base) - node.level + 1]
            module = ".".join(anchor + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        # "from package import module" imports the module; "from module import name" the module.
        candidates = {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {c for c in candidates if c in modules and c != name and not name.startswith(c + ".")}


def imports() -> list[Import]:
    """Every import of one package module by another, with where it stands."""
    modules = package_modules()
    found = []
    for name, path in modules.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, str(path))
        functions = [
            node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        in_function = {
            id(inner) for function in functions for inner in ast.walk(function) if inner is not function
        }
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, path.name == "__init__.py", set(modules)):
                    found.append(
                        Import(name, target, node.lineno, id(node) in in_function, lines[node.lineno - 1])
                    )
    return found


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def circles(found: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {name: set() for name in package_modules()}
    for edge in found:
        graph[edge.importer].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def upward(found: list[Import]) -> list[Import]:
    """Imports of a module from a layer above the importer's, not allowed with a reason."""
    return [
        edge
        for edge in found
        if layer_of(edge.target) > layer_of(edge.importer)
        and (edge.importer, edge.target) not in UPWARD_ALLOWED
    ]


def unexplained_function_imports(found: list[Import]) -> list[Import]:
    """Function-level imports of the package with no comment giving their reason.

    The reason sits at the end of the import's line, or on the comment line just above it.
    """
    bad = []
    for edge in found:
        if not edge.in_function or "#" in edge.source_line:
            continue
        path = package_modules()[edge.importer]
        lines = path.read_text().splitlines()
        above = [line.strip() for line in lines[max(0, edge.line - 6) : edge.line - 1]]
        # The comment block directly above the import (imports of the same statement group between).
        explained = False
        for line in reversed(above):
            if line.startswith("#"):
                explained = True
                break
            if not (line.startswith(("from ", "import ")) or line == ""):
                break
        if not explained:
            bad.append(edge)
    return bad


def test_there_is_no_import_circle() -> None:
    assert circles(imports()) == []


def test_every_module_has_a_layer() -> None:
    for module in package_modules():
        layer_of(module)


def test_imports_point_down_the_layers() -> None:
    problems = [
        f"{e.importer} ({LAYERS[layer_of(e.importer)][0]}) imports {e.target} "
        f"({LAYERS[layer_of(e.target)][0]}) at line {e.line}"
        for e in upward(imports())
    ]
    assert problems == []


def test_each_function_level_import_says_why() -> None:
    problems = [
        f"{e.importer}:{e.line}: {e.source_line.strip()}" for e in unexplained_function_imports(imports())
    ]
    assert problems == []


def test_the_checker_finds_a_circle_and_an_upward_import() -> None:
    """The checks above can fail: a circle and an upward edge, made up, are both found."""
    made_up = [
        Import("django_poolguard.engine.pool", "django_poolguard.watchdog.leaks", 1, False, ""),
        Import("django_poolguard.watchdog.leaks", "django_poolguard.engine.pool", 1, False, ""),
    ]
    assert ["django_poolguard.engine.pool", "django_poolguard.watchdog.leaks"] in circles(made_up)
    assert [(e.importer, e.target) for e in upward(made_up)] == [
        ("django_poolguard.engine.pool", "django_poolguard.watchdog.leaks")
    ]


def main() -> int:
    found = imports()
    problems = [f"import circle: {', '.join(circle)}" for circle in circles(found)]
    problems += [
        f"upward import: {e.importer} ({LAYERS[layer_of(e.importer)][0]}) -> {e.target} "
        f"({LAYERS[layer_of(e.target)][0]}), line {e.line}"
        for e in upward(found)
    ]
    problems += [
        f"function-level import without a reason: {e.importer}:{e.line}: {e.source_line.strip()}"
        for e in unexplained_function_imports(found)
    ]
    function_level = sum(1 for e in found if e.in_function)
    print(
        f"{len(package_modules())} modules, {len(found)} imports inside the package, {function_level} at function level"
    )
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
