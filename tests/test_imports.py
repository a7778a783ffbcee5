"""Imports: no cycle between nestrank's modules, and importing the library's packages loads no torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph(package: str, src: Path = SRC, *, type_checking: bool = True) -> dict[str, set[str]]:
    """``{module: modules of package it imports}`` from every import statement (top-level, lazy and, unless
    ``type_checking=False``, under ``if TYPE_CHECKING:``)."""
    root = src.joinpath(*package.split("."))
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = set() if type_checking else {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                                                and ast.unparse(block.test).endswith("TYPE_CHECKING")
                                                for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]`` when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_training_package_has_no_import_cycle():
    graph = import_graph("nestrank.train")
    assert {"nestrank.train.loop", "nestrank.train.matryoshka", "nestrank.train.pointwise"} <= graph.keys()
    assert find_cycle(graph) == []


def test_nestrank_has_no_import_cycle():
    """Every import that runs counts: module-level and inside functions (not type-checking-only imports)."""
    graph = import_graph("nestrank", type_checking=False)
    assert {"nestrank.cli.app", "nestrank.pipeline.pipeline", "nestrank.serve.state"} <= graph.keys()
    assert find_cycle(graph) == []


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in (SRC / "nestrank").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def test_importing_the_library_packages_loads_no_torch():
    code = ("import sys, nestrank.train, nestrank.models, nestrank.pipeline, nestrank.retrieve, nestrank.serve; "
            "print(sorted({'torch', 'transformers', 'peft', 'accelerate', 'fastapi'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.stdout.strip() == "[]"
