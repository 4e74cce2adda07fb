"""The package's layers, read from its imports (every ``import`` statement, at any depth of a module,
so a lazy import inside a function counts too).

``core`` imports nothing of geomlib above it; ``runtime`` only ``core``; ``sd`` only ``core`` and
``runtime``; a chapter only those three and its own package, never another chapter, the command
line or the book; the command line not the chapters; and no module imports another that imports
it back (no cycle). The checks run on synthetic graphs first, so a broken checker cannot pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geomlib"

#: What each layer may import (besides itself); ``geomlib`` is the package's face (``__init__``).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "runtime": {"core"},
    "sd": {"core", "runtime", "geomlib"},
    "chapters": {"core", "runtime", "sd", "geomlib"},
    "cli": {"core", "runtime", "sd", "geomlib"},
    "book": {"core", "runtime", "sd", "chapters", "geomlib"},  # the top: it runs the chapters
    "geomlib": {"core", "runtime", "sd", "cli"},  # __init__ (sd lazily) and __main__ (the cli)
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from the source alone."""
    modules = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("geomlib")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geomlib"):
                for alias in node.names:  # `from geomlib.sd import decoder` imports a module
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t != name}
    return graph


def layer(module: str) -> str:
    """``core``, ``runtime``, ``sd``, ``chapters``, ``cli``, ``book`` or ``geomlib`` (the face)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else "geomlib"


def chapter(module: str) -> str | None:
    """The chapter a module belongs to (``geomlib.chapters.corruptions.measure``: ``corruptions``)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "chapters" else None


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs the wrong way, in words."""
    found = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = layer(source), layer(target)
            if there != here and there not in ALLOWED[here]:
                found.append(f"{source} imports {target}: {here} may not import {there}")
            elif here == there == "chapters" and chapter(target) not in (chapter(source), None):
                found.append(f"{source} imports {target}: a chapter imports another chapter")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (one path per cycle found by depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_checkers_catch_what_they_look_for():
    """On made-up graphs: a cycle, core importing sd, one chapter importing another, a chapter
    importing the command line; and a clean graph passes."""
    assert cycles({"geomlib.sd.a": {"geomlib.sd.b"}, "geomlib.sd.b": {"geomlib.sd.a"}})
    assert not cycles({"geomlib.sd.a": {"geomlib.sd.b"}, "geomlib.sd.b": set()})
    bad = {
        "geomlib.core.jacobian": {"geomlib.sd.decoder"},
        "geomlib.chapters.trajectories.store": {"geomlib.chapters.corruptions.measure"},
        "geomlib.chapters.corruptions.measure": {"geomlib.cli", "geomlib.chapters.corruptions.corrupt"},
    }
    assert len(violations(bad)) == 3
    good = {"geomlib.chapters.corruptions.measure": {"geomlib.sd.decoder", "geomlib.chapters.corruptions"}}
    assert violations(good) == []


def test_the_graph_is_read_from_every_import():
    graph = import_graph()
    assert "geomlib.core.jacobian" in graph["geomlib.core.descriptors"]
    assert "geomlib.sd.pipelines" in graph["geomlib.sd.runs"]  # imported inside a function
    assert {layer(m) for m in graph} == set(ALLOWED)


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_every_import_runs_down_the_layers():
    assert violations(import_graph()) == []


@pytest.mark.parametrize("folder", ["core", "runtime", "sd", "chapters", "book"])
def test_no_module_is_far_over_five_hundred_lines(folder):
    """The standard says about 500 lines a module; this allows a little over, not twice."""
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in (PACKAGE / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 550
    }
    assert not long, long
