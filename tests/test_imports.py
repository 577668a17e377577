"""Imports point down the layers, and no module imports itself back through others.

The layers (docs/architecture.md): io, tables, config → data → models → hooks (probe, capture)
→ losses, targets, maps → batching (collate) → train, heads, lens, pretrain → eval, viz →
experiment → report → cli.
Every ``import`` in ``src/lookhere`` counts: at module level, inside functions (lazy imports are
arrows too) and under ``TYPE_CHECKING``. The checker is tested on a made-up package with an
upward arrow and a cycle, so it cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: module prefix -> layer; the longest matching prefix wins
LAYERS = {
    "lookhere": 0, "lookhere.io": 0, "lookhere.tables": 0, "lookhere.config": 0,
    "lookhere.data": 1,
    "lookhere.models": 2,
    "lookhere.probe": 3, "lookhere.capture": 3,
    "lookhere.losses": 4, "lookhere.targets": 4, "lookhere.maps": 4,
    "lookhere.collate": 5,
    "lookhere.train": 6, "lookhere.heads": 6, "lookhere.lens": 6, "lookhere.pretrain": 6,
    "lookhere.eval": 7, "lookhere.viz": 7,
    "lookhere.experiment": 8,
    "lookhere.report": 9, "lookhere.view": 9,
    "lookhere.cli": 10,
}


def modules(root: Path, package: str = "lookhere") -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph(root: Path, package: str = "lookhere") -> dict[str, set[str]]:
    """module -> the package's modules it imports (the longest existing module of each name)."""
    mods = modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, pkg):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] == package:
                    graph[name].add(target)
    return graph


def _targets(node: ast.AST, pkg: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names]


def layer(module: str, layers: dict[str, int]) -> int:
    best = max((p for p in layers if module == p or module.startswith(p + ".")), key=len,
               default=None)
    if best is None:
        raise KeyError(f"{module} has no layer: add it to LAYERS")
    return layers[best]


def upward(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return sorted(f"{a} (layer {layer(a, layers)}) -> {b} (layer {layer(b, layers)})"
                  for a, targets in graph.items() for b in targets
                  if layer(b, layers) > layer(a, layers))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted.

    A package's ``__init__`` importing its own submodules is not a cycle by itself: only an
    import of the package back from one of its submodules closes one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down():
    graph = import_graph(SRC)
    assert upward(graph, LAYERS) == []


def test_no_import_cycles():
    assert cycles(import_graph(SRC)) == []


def test_every_module_has_a_layer():
    for name in modules(SRC):
        layer(name, LAYERS)


@pytest.fixture
def toy(tmp_path):
    """A made-up package: ``low`` imports ``high`` (upward), ``a`` and ``b`` import each other."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low.py": "def f():\n    from toy.high import g\n",
        "high.py": "from toy import low\n",
        "sub/__init__.py": "from toy.sub import a\n",
        "sub/a.py": "from . import b\n",
        "sub/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from toy.sub.a import x\n"),
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    return tmp_path


def test_the_checker_finds_an_upward_import_and_a_cycle(toy):
    graph = import_graph(toy, "toy")
    layers = {"toy": 0, "toy.low": 0, "toy.high": 1, "toy.sub": 0}
    assert upward(graph, layers) == ["toy.low (layer 0) -> toy.high (layer 1)"]
    assert cycles(graph) == [["toy.high", "toy.low"], ["toy.sub.a", "toy.sub.b"]]
    assert cycles({"p": {"p.x"}, "p.x": set()}) == []
