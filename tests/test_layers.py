"""The package layering of docs/design.md, enforced on the source: no package imports one of
a higher layer, the packages' import graph has no cycle, and no module imports itself back
at import time. Imports are read from the source (every ``import`` statement, those inside
functions included), so a lazy import counts as a dependency too.

A new top-level module or package must be given a layer in LAYERS (and a line in
docs/design.md). The two dynamic imports, by name, are outside this check on purpose:
``vmwu.cli`` starts ``vmwu sweep``/``vmwu wrap`` through its SUBSYSTEMS table, and
``vmwu.sweep.executors`` loads an executor by name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import vmwu

ROOT = Path(vmwu.__file__).resolve().parent

# Top to bottom. A package may import its own layer and the layers below it.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("entry point", frozenset({"__main__", "entry"})),
    ("subsystems", frozenset({"sweep", "wrapper"})),
    ("commands", frozenset({"cli", "cache_report", "doctor", "ui"})),
    ("pack", frozenset({"pack"})),
    ("run", frozenset({"run"})),
    ("bases", frozenset({"bases"})),
    ("unit format and machines", frozenset({"unit", "vmm"})),
    ("images and node cache", frozenset({"images", "cache"})),
    ("guest protocol", frozenset({"guest"})),
    (
        "foundations",
        frozenset(
            {
                "__init__",
                "arch",
                "digest",
                "errors",
                "extras",
                "guard",
                "hostfs",
                "locks",
                "options",
                "paths",
                "procstat",
                "sizes",
                "tools",
                "xmlsafe",
            }
        ),
    ),
)
RANK = {name: len(LAYERS) - i for i, (_, names) in enumerate(LAYERS) for name in names}
LAYER_OF = {name: layer for layer, names in LAYERS for name in names}


def modules() -> dict[str, Path]:
    """Every module of vmwu by dotted name (a package by its own name)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def owner(module: str) -> str:
    """The top-level module or package of ``vmwu.X.Y``: ``X`` (``__init__`` for vmwu)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(path: Path, *, top_level_only: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) for each vmwu module ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            names = [node.module or ""]
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "vmwu" or name.startswith("vmwu."):
                while name not in MODULES:  # vmwu.x.func -> vmwu.x
                    name = name.rpartition(".")[0]
                yield node.lineno, name


def package_graph() -> dict[str, dict[str, str]]:
    """owner -> {imported owner: where the first such import is}."""
    graph: dict[str, dict[str, str]] = {}
    for module, path in sorted(MODULES.items()):
        edges = graph.setdefault(owner(module), {})
        for line, target in imported(path):
            if owner(target) != owner(module):
                edges.setdefault(owner(target), f"{path.relative_to(ROOT.parent)}:{line}")
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``, if it has any."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_top_level_module_has_a_layer() -> None:
    missing = sorted({owner(m) for m in MODULES} - set(RANK))
    assert not missing, f"give these a layer in tests/test_layers.py and docs/design.md: {missing}"
    gone = sorted(set(RANK) - {owner(m) for m in MODULES})
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_no_package_imports_a_higher_layer() -> None:
    upward = [
        f"{where}: vmwu.{src} ({LAYER_OF[src]}) imports vmwu.{dst} ({LAYER_OF[dst]})"
        for src, edges in package_graph().items()
        for dst, where in edges.items()
        if RANK[dst] > RANK[src]
    ]
    assert not upward, "\n".join(upward)


def test_the_package_graph_has_no_cycle() -> None:
    graph = {src: set(edges) for src, edges in package_graph().items()}
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_no_module_imports_itself_back_at_import_time() -> None:
    graph = {
        module: {target for _, target in imported(path, top_level_only=True)} - {module}
        for module, path in MODULES.items()
    }
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_the_checks_see_an_upward_import_and_a_cycle() -> None:
    """The checks above can fail: a run-layer module importing the sweep would be upward,
    and two packages importing each other a cycle."""
    assert RANK["sweep"] > RANK["run"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    graph = package_graph()
    assert "run" in graph["sweep"]  # the sweep's runner reads status.json through RunStatus
    assert "sweep" not in graph["run"]
