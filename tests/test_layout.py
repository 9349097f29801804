"""The library (media, audio, face, render, pipeline, ...) works without the studio, so it must never import
lipdub.studio; and no lipdub modules may import each other round in a circle, which makes the import order
matter and hides which module is built on which."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lipdub"
# The command line joins the library and the studio (`lipdub serve`, `lipdub worker`), so it may import both.
APPLICATION = ("lipdub.studio", "lipdub.cli", "lipdub.commands", "lipdub.__main__")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The lipdub modules ``path`` imports, wherever the import statement is: a function's lazy import and
    one under ``if TYPE_CHECKING:`` are dependencies too (the module is written against the other)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from lipdub.x import y`: y may be a module itself
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: imports_of(path, set(files), root) for name, path in files.items()}


def back_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(core module, studio module) for every import of the studio from the library."""
    return sorted((m, d) for m, deps in graph.items() if not m.startswith(APPLICATION)
                  for d in deps if d.startswith("lipdub.studio"))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def test_the_library_never_imports_the_studio():
    graph = import_graph()
    assert "lipdub.studio.jobs.service" in graph and "lipdub.pipeline" in graph  # the walk found the tree
    assert back_imports(graph) == []


def test_no_import_cycles_among_lipdub_modules():
    assert cycles(import_graph()) == []


def test_the_checks_catch_a_back_import_and_a_cycle(tmp_path):
    """The walk itself, on a small tree: imports inside a function and under TYPE_CHECKING count."""
    pkg = tmp_path / "lipdub"
    (pkg / "studio").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "studio" / "__init__.py").write_text("")
    (pkg / "studio" / "service.py").write_text("from lipdub.pipeline import generate\n")
    (pkg / "pipeline.py").write_text("def generate():\n    from lipdub import device\n")
    (pkg / "device.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    import lipdub.pipeline\n")
    graph = import_graph(pkg)
    assert back_imports(graph) == []
    assert cycles(graph) == [["lipdub.device", "lipdub.pipeline"]]
    (pkg / "device.py").write_text("def pick():\n    from lipdub.studio.service import x\n")
    graph = import_graph(pkg)
    assert back_imports(graph) == [("lipdub.device", "lipdub.studio.service")]
    assert cycles(graph) == [["lipdub.device", "lipdub.pipeline", "lipdub.studio.service"]]
