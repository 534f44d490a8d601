"""The rooms' imports, read from the source (ast, nothing imported): no import cycle among
the project's modules, lazy imports inside functions included; the core (couponflow/)
imports no room and no tool at module level but where ALLOWED says why; the service's
runtime never imports the deployment tooling (the bento packs the runtime only); and every
third-party package our code imports is declared in pyproject.toml (issue 20)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from couponflow.config import PROJECT_ROOT

ROOMS = ("couponflow", "training", "serving", "expectations", "dags", "feature_repo")
TOOLS = ("airflow", "great_expectations", "feast", "bentoml", "dvc")
# Core modules that import a room or a tool at module level, and why. Lazy imports inside
# functions are how the core reaches the rooms (the CLI's verbs); they still count for
# cycles.
ALLOWED: dict[str, str] = {}
# serving/'s flat paths before it was split, for files another branch is changing now
# (training/train.py, benchmarks/): nothing else may import them.


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_of(p): p for room in ROOMS for p in sorted((PROJECT_ROOT / room).rglob("*.py"))}


def _imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, at module level) of each import in `path`; `from a import b` names
    a.b when that is a module of ours. Imports under `if TYPE_CHECKING:` are left out."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_of(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = (_module_of(path) if package is None else package).split(".")
                base = ".".join([*anchor[: len(anchor) - node.level + 1], base]).strip(".")
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield (name if name in MODULES else base), id(node) in top


def _ours(name: str) -> str | None:
    """The module of ours `name` imports (itself, or the package it is in), else None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports, and the packages above them that the
    import runs (but the importer's own, which run before it)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _ in _imports(path):
            target = _ours(name)
            if target is None or target == module:
                continue
            graph[module].add(target)
            parts = target.split(".")
            for package in (".".join(parts[:i]) for i in range(1, len(parts))):
                if package in MODULES and not module.startswith(package + "."):
                    graph[module].add(package)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_modules_are_found() -> None:
    assert {"couponflow.cli", "serving.runtime.service", "dags.coupon_pipeline"} <= set(MODULES)
    graph = _graph()
    assert "couponflow.airflow_local" in graph["couponflow.airflow_services"]
    assert "serving.deploy" in graph["serving.deploy.bento"]  # a package's __init__ counts


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] == "couponflow"))
def test_the_core_imports_no_room_or_tool_at_module_level(module: str) -> None:
    reached = {
        name.split(".")[0]
        for name, top in _imports(MODULES[module])
        if top and name.split(".")[0] in (*ROOMS, *TOOLS) and name.split(".")[0] != "couponflow"
    }
    assert not reached or module in ALLOWED, f"{module} imports {sorted(reached)}"


def test_the_runtime_never_imports_the_deployment_tooling() -> None:
    graph = _graph()
    for module in (m for m in MODULES if m.startswith("serving.runtime")):
        assert not {t for t in graph[module] if t.startswith("serving.deploy")}, module
        assert "serving.client" not in graph[module], module


# Import names several distributions install into, and the one we declare for them.
NAMESPACES = {"airflow": "apache-airflow", "google": "protobuf"}  # the only google.* we import


def _declared(*extras: str) -> set[str]:
    """The distributions pyproject.toml declares (normalised names), with `extras`."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {_normal(re.match(r"[A-Za-z0-9._-]+", r)[0]) for r in requirements}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """distribution -> the files of `folders` importing it (stdlib and ours left out)."""
    ours = {*ROOMS, "tests", "tools", "benchmarks"}
    found: dict[str, set[str]] = {}
    dists = packages_distributions()
    for folder in folders:
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            for name, _ in _imports(path):
                top = name.split(".")[0]
                if not top or top in ours or top in sys.stdlib_module_names:
                    continue
                dist = NAMESPACES.get(top) or dists.get(top, [f"<no distribution: {top}>"])[0]
                found.setdefault(_normal(dist), set()).add(path.name)
    return found


def test_every_package_the_code_imports_is_declared() -> None:
    missing = {d: f for d, f in _third_party(ROOMS).items() if d not in _declared()}
    assert missing == {}, "add them to [project] dependencies"


def test_every_package_the_tests_import_is_declared() -> None:
    imported = _third_party(("tests", "tools"))
    missing = {d: f for d, f in imported.items() if d not in _declared("dev")}
    assert missing == {}, "add them to the dev extra"


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/helpers/ (and fixtures in conftest): running one test
    file never imports another's tests."""
    found = {
        f"{path.name} imports {name}"
        for path in sorted((PROJECT_ROOT / "tests").glob("test_*.py"))
        for name, _ in _imports(path)
        if re.match(r"tests\.test_\w+", name)
    }
    assert found == set()
