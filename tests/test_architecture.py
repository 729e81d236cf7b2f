"""The house is one-way: no import cycle between mlquant's modules, no private name used across modules, no assert.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy import hides a cycle from
Python, not from the reader. Method modules registering themselves (``importlib.import_module`` by name in
:mod:`mlquant.spec`) are plugins, not imports, and are not edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlquant"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every mlquant import in a module, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "mlquant":
                for alias in node.names:
                    full = f"{module}.{alias.name}"
                    yield (full, None, node.lineno) if full in MODULES else (module, alias.name, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlquant":
                    yield alias.name, None, node.lineno


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, _, _ in _imports(name, path):
            if module != name and module in MODULES:
                graph[name].add(module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    graph = import_graph()
    # The root package re-exports the public API; nothing inside the package may import it back.
    # The CLI is the one consumer inside the package: it uses the public API as a user does.
    back = sorted(name for name, deps in graph.items() if "mlquant" in deps and name not in ("mlquant", "mlquant.cli"))
    assert back == [], f"modules importing the root package (import from the defining module instead): {back}"
    graph["mlquant"] = set()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_value_objects_live_in_leaf_modules() -> None:
    graph = import_graph()
    allowed = {
        "mlquant.errors": set(),
        "mlquant.version": set(),
        "mlquant._registry": {"mlquant.errors"},
        "mlquant.spec": {"mlquant.errors", "mlquant._registry"},
        "mlquant.requests": {"mlquant.spec"},
    }
    for module, deps in allowed.items():
        assert graph[module] <= deps, f"{module} imports {sorted(graph[module] - deps)}"
    # Models know specs, never the quantizers; the runner and the study know neither each other's privates.
    assert not any(d.startswith("mlquant.quantize") for d in graph["mlquant.models"])
    assert "mlquant.study" not in graph["mlquant._runner"]


def test_no_private_name_is_used_across_modules() -> None:
    offences = []
    for name, path in MODULES.items():
        for module, imported, line in _imports(name, path):
            if imported and imported.startswith("_") and not imported.startswith("__") and module != name:
                offences.append(f"{path.name}:{line}: from {module} import {imported}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    # Documented exceptions: torch has no public API to remove a pre-hook by function (quantize/_common.py), nor to
    # ask whether a module has hooks (_head.py lets the scorer and the generation loop apply the LM head themselves
    # only when it has none).
    offences = [o for o in offences if "linear._forward_pre_hooks" not in o]
    offences = [o for o in offences if not (o.startswith("mlquant/_head.py:") and o.endswith(
        ("head._forward_hooks", "head._forward_pre_hooks")))]
    assert offences == []


def test_no_assert_in_runtime_code() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert)
    ]
    assert found == [], "validate with exceptions that name what was wrong, never assert"


@pytest.mark.parametrize("module", ["mlquant", "mlquant.spec", "mlquant.requests", "mlquant.study", "mlquant.cells"])
def test_cheap_modules_do_not_import_torch(module: str) -> None:
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
