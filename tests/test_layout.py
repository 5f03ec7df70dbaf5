"""The package's structure holds: no module imports another's private (``_name``) names, and no
import circle (lazy imports inside functions count), as the README's Code map promises."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "crack_lightning"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported crack_lightning module, names taken from it)], every import statement."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    out = {}
    for name, path in modules.items():
        found = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crack_lightning"):
                for alias in node.names:  # `from pkg import module` imports the module
                    sub = f"{node.module}.{alias.name}"
                    found.append((sub, []) if sub in modules else (node.module, [alias.name]))
            elif isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names if a.name.startswith("crack_lightning")]
        out[name] = found
    return out


def test_no_module_imports_a_private_name_of_another():
    private = [(module, target, name) for module, found in _imports().items() for target, names in found
               for name in names if name.startswith("_") and not name.startswith("__") and target != module]
    assert not private, private


def test_no_import_circles():
    graph = {m: {t for t, _ in found if t != m and t != "crack_lightning"} for m, found in _imports().items()}
    # a package's __init__ is a face: `import crack_lightning.x.y` runs it, but it imports lazily
    done, stack, circles = set(), [], []

    def visit(module):
        if module in stack:
            circles.append(stack[stack.index(module):] + [module])
            return
        if module in done or module not in graph:
            return
        stack.append(module)
        for target in sorted(graph[module]):
            visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert not circles, circles
