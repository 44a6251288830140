"""The package's shape: no two parts import each other, and no command imports another command.

Read from the source with :mod:`ast`, so imports inside functions (lazy imports) and under ``TYPE_CHECKING``
count too: a lazy import that closes a cycle still ties the two parts together.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxrnet"

# modules run as ``python -m <name>``: each is an entry point, and none may import another
COMMANDS = (
    "cxrnet.train",
    "cxrnet.predict",
    "cxrnet.evaluate",
    "cxrnet.calibrate",
    "cxrnet.export",
    "cxrnet.explain.evaluate",
    "cxrnet.data.check",
    "cxrnet.serve",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, prefix: str = "cxrnet") -> set[str]:
    """Every module under ``prefix`` that ``path`` imports, anywhere in the file."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # ``from cxrnet.data import cache`` imports the module cxrnet.data.cache
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == prefix or m.startswith(f"{prefix}.")}


def _existing(modules: set[str], known: set[str]) -> set[str]:
    return {m for m in modules if m in known}


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(p) for p in paths}
    return {_module_name(p): _existing(_imports(p), known) for p in paths}


def _unit(module: str) -> str:
    """``cxrnet.evaluation.summary`` -> ``cxrnet.evaluation``; ``cxrnet.train`` -> ``cxrnet.train``."""
    return ".".join(module.split(".")[:2])


def unit_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Cycles between the package's parts (a top-level module or sub-package each), shortest first."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            # the root package is a facade of lazy names: importing __version__ from it ties nothing
            if "cxrnet" not in (module, target) and _unit(module) != _unit(target):
                edges[_unit(module)].add(_unit(target))
    cycles = set()
    for start in sorted(edges):
        paths = [[start]]
        while paths:  # breadth first: every shortest cycle through ``start``
            path = paths.pop(0)
            for nxt in sorted(edges[path[-1]]):
                if nxt == start:
                    i = path.index(min(path))
                    cycles.add(tuple(path[i:] + path[:i]))
                elif nxt not in path and len(path) < 6:
                    paths.append([*path, nxt])
    return sorted(cycles, key=lambda c: (len(c), c))


def test_no_two_parts_of_the_package_import_each_other() -> None:
    cycles = unit_cycles(_graph())
    assert not cycles, "import cycles between parts of cxrnet:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_numeric_core_imports_nothing_that_runs_models_or_draws() -> None:
    graph = _graph()
    core = {m: targets for m, targets in graph.items() if _unit(m) == "cxrnet.evaluation"}
    assert core, "cxrnet.evaluation is gone"
    outside = {t for targets in core.values() for t in targets if _unit(t) != "cxrnet.evaluation"}
    assert not outside, f"cxrnet.evaluation should be pure numerics; it imports {sorted(outside)}"


@pytest.mark.parametrize("part", ["data", "models"])
def test_data_and_models_stay_apart_and_free_of_lightning(part: str) -> None:
    other = {"data": "cxrnet.models", "models": "cxrnet.data"}[part]
    for path in sorted((PACKAGE / part).rglob("*.py")):
        imported = _imports(path)
        assert not {m for m in imported if _unit(m) == other}, f"{path.name} imports {other}"
        for framework in ("lightning", "pytorch_lightning"):
            assert not _imports(path, framework), f"{path.name} imports {framework}"


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_imports_another_command(command: str) -> None:
    graph = _graph()
    assert command in graph, f"{command} is not a module of the package any more; update COMMANDS"
    others = graph[command] & (set(COMMANDS) - {command})
    assert not others, (
        f"{command} imports the command(s) {sorted(others)}; move what they share to cxrnet.command"
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {
        "cxrnet.evaluation.report": {"cxrnet.report.writer"},
        "cxrnet.report.plots": {"cxrnet.evaluation.classification"},
        "cxrnet.train": {"cxrnet.module", "cxrnet"},
        "cxrnet.module": set(),
    }
    assert unit_cycles(graph) == [("cxrnet.evaluation", "cxrnet.report")]
