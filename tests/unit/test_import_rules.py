"""The package's layering, read from its import graph (stdlib ``ast``, nothing imported), so it stays true:
core/ knows no feature, metric or app; settings.py imports nothing of the package; no import circle at run
time (imports inside functions count: they run too; ``if TYPE_CHECKING:`` blocks do not); argparse and
print only in cli/ and dev/, the command line and development tools."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The repo's agents/ and tables/ folders install as visionstream.agents / visionstream.tables (setup.cfg).
SOURCES = {"visionstream": REPO / "visionstream", "visionstream.agents": REPO / "agents",
           "visionstream.tables": REPO / "tables"}
FEATURES = ("classification", "faces", "images", "frames", "bulk", "dashboard")
APP = ("faust_app", "agents", "tables", "worker", "health", "cli", "dev")
COMMAND_LINE = ("visionstream.cli", "visionstream.dev")


def package_modules() -> dict[str, Path]:
    modules = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = [part for part in path.relative_to(folder).with_suffix("").parts if part != "__init__"]
            modules[".".join([prefix, *parts])] = path
    return modules


MODULES = package_modules()


def _owner(name: str) -> str | None:
    """The package module an imported name lives in (``a.b.c`` -> ``a.b`` when c is an attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that runs, leaving out ``if TYPE_CHECKING:`` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:
                yield other
                yield from _statements(other)
            continue
        yield node
        yield from _statements(node)


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports at run time."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in _statements(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {owner for name in names if name.startswith("visionstream") and (owner := _owner(name))}
    return found - {module}


GRAPH = {module: imports_of(module) for module in MODULES}


def _in(module: str, *subpackages: str) -> bool:
    return any(module == f"visionstream.{sub}" or module.startswith(f"visionstream.{sub}.") for sub in subpackages)


def test_the_graph_is_read():
    """The rules below are only as good as the graph: it must see the imports that are there."""
    assert "visionstream.core.pipeline" in GRAPH["visionstream.worker.assemble"]
    assert "visionstream.settings" in GRAPH["visionstream.core.analyzers"]  # a name imported from a module
    assert "visionstream.metrics" in GRAPH["visionstream.worker.assemble"]  # `from visionstream import metrics`
    assert "visionstream.worker.assemble" in GRAPH["visionstream.agents.analyze"]  # an installed-as package


def test_core_imports_no_feature_no_metrics_and_no_app():
    wrong = sorted((module, target) for module, targets in GRAPH.items() if _in(module, "core")
                   for target in targets if _in(target, *FEATURES, *APP, "metrics"))
    assert wrong == []


def test_settings_import_nothing_of_the_package():
    assert GRAPH["visionstream.settings"] == set()


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_circles_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_at_run_time():
    assert circles(GRAPH) == []


def _command_line_uses(path: Path) -> list[str]:
    uses = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            uses.append(f"print at line {node.lineno}")
        elif isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names) or (
                isinstance(node, ast.ImportFrom) and node.module == "argparse"):
            uses.append(f"argparse at line {node.lineno}")
    return uses


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith(COMMAND_LINE)))
def test_argparse_and_print_only_in_the_command_line(module):
    assert _command_line_uses(MODULES[module]) == []
