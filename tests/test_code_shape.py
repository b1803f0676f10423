"""The package's shape: no import circles, no module over 400 lines, a docstring on every module.

The import graph is read from the source with :mod:`ast`, so imports inside functions and under
``if TYPE_CHECKING:`` count too: a circle hidden by a function-level import is still a circle.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "vlmserve"
MAX_LINES = 400


def module_name(path: Path) -> str:
    """``vlmserve/planner/plan.py`` -> ``vlmserve.planner.plan``; a package's ``__init__``
    -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import module`` imports the module; ``from module import name`` the module.
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
            found.add(base)
    return {m for m in found if m in MODULES and m != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    return {name: imported_modules(name, path) for name, path in MODULES.items()}


def test_graph_reader_sees_function_level_imports() -> None:
    # The CLI imports each subcommand's module inside functions only; the reader must see that.
    graph = import_graph()
    assert "vlmserve.planner.planner" in graph["vlmserve.cli.plan"]
    assert "vlmserve.models.families" in graph["vlmserve.models.catalog"]


def test_no_import_circles() -> None:
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short_and_documented(name: str) -> None:
    path = MODULES[name]
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines (limit {MAX_LINES})"
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring and docstring.strip(), f"{path.relative_to(REPO)} has no module docstring"
