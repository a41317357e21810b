"""The import graph of ``encnet_lite`` has no circle, and the command-line code names no
error type: it catches the library's one base class, :class:`encnet_lite.errors.EncnetError`.

The graph is read from the source (``ast``), so an import inside a function counts as much
as one at the top: a circle that only closes at run time is still a circle a reader has to
untangle.
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = Path(__file__).resolve().parents[1] / "encnet_lite"


def module_name(path: Path) -> str:
    """``encnet_lite/data/common.py`` -> ``encnet_lite.data.common`` (a package's
    ``__init__.py`` is the package itself)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from ..cli import x`` in
    ``encnet_lite.data.download`` -> ``encnet_lite.cli``)."""
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The modules of ``encnet_lite`` that ``path`` imports, at any depth of the file.

    ``from pkg import sub`` counts as importing ``pkg.sub`` when ``sub`` is a module, else
    as importing ``pkg`` (the name comes from its ``__init__``)."""
    found: Set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imported(name, path, set(known)) for name, path in known.items()}


def find_cycle(edges: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One circle of ``edges`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: finished
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_circle_and_only_one_that_exists():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_resolve_reads_relative_imports_like_python():
    def node(src: str) -> ast.ImportFrom:
        return ast.parse(src).body[0]

    assert _resolve("encnet_lite.data.download", False, node("from ..cli import x")) == \
        "encnet_lite.cli"
    assert _resolve("encnet_lite.data", True, node("from .common import x")) == \
        "encnet_lite.data.common"
    assert _resolve("encnet_lite.train", False, node("from . import cli")) == "encnet_lite"


def test_the_graph_sees_imports_inside_functions():
    edges = graph()
    # train.main imports cli inside the function body, not at the top of the module
    assert "encnet_lite.cli" in edges["encnet_lite.train"]
    assert "encnet_lite.errors" in edges["encnet_lite.cli"]


def test_encnet_lite_imports_form_no_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_errors_is_a_leaf():
    assert graph()["encnet_lite.errors"] == set()


def test_cli_imports_no_error_type_by_name():
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    names = {alias.asname or alias.name for node in ast.walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert not {n for n in names if n.endswith("Error")}, names
