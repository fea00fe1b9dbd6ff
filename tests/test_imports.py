"""Every module imports, and the package's imports form a DAG with batching at the bottom.

The graph counts every import between ftcourse modules, at the top of a file or inside a
function: a function-level import that only dodges a cycle is still a cycle.
"""

import ast
import importlib
import pkgutil
from pathlib import Path

import ftcourse

PACKAGE = Path(ftcourse.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the ftcourse modules it imports}, read from the source with `ast`."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                # `from ftcourse.memory import plan` imports a module; `from ftcourse.memory import x`
                # a name of the package's __init__.
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in modules else node.module)
        graph[name] = imported - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for child in sorted(graph[module]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(ftcourse.__path__, "ftcourse.")]
    assert len(names) >= 10
    for name in names:
        importlib.import_module(name)


def test_the_package_imports_form_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_training_core_sits_at_the_bottom():
    graph = import_graph()
    assert graph["ftcourse.batching"] == set(), "batching depends on torch only"
    assert graph["ftcourse.checkpoints"] == set() and graph["ftcourse.plots"] == set()
    assert graph["ftcourse.train"] <= {"ftcourse.batching", "ftcourse.checkpoints", "ftcourse.plots"}


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
