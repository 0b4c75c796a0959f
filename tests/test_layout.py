"""The package's shape: no import cycles (function-level imports included) and no reaching into private names.

h11's rule: a module's underscore names are its own. A private module
(``engine/_publisher.py``) is private to its package, and its public names are
what the package's other modules use.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "moqt_asgi"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` for every import in ``path``, at any depth, resolved to absolute names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names], node.lineno


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for module, path in known.items():
        for target, names, _ in imports(module, path):
            if not target.startswith("moqt_asgi"):
                continue
            for name in names or [""]:
                full = f"{target}.{name}" if name and f"{target}.{name}" in known else target
                if full in known and full != module:
                    edges[module].add(full)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def package_parent(edges_module: str) -> str:
    return edges_module.rpartition(".")[0]


def test_no_import_cycles() -> None:
    """Package ``__init__`` modules re-export their submodules, which is not a cycle of code; everything else is."""
    edges = graph()
    for module in list(edges):
        # a submodule importing its own package's __init__ would be a real cycle; the reverse edge is the re-export
        edges[module] = {t for t in edges[module] if not (modules()[module].name == "__init__.py"
                                                         and t.startswith(module + "."))}
    assert cycles(edges) == []


def test_no_module_imports_another_modules_private_names() -> None:
    known = modules()
    offences = []
    for module, path in known.items():
        for target, names, line in imports(module, path):
            if not target.startswith("moqt_asgi") or target == module:
                continue
            own_package = module.rpartition(".")[0] if path.name != "__init__.py" else module
            for name in names:
                submodule = f"{target}.{name}" in known
                if name.startswith("_") and not name.startswith("__") and not (submodule and target == own_package):
                    offences.append(f"{path.relative_to(ROOT)}:{line} imports {name} from {target}")
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target.split("."))
            if private_module and not module.startswith(target.rpartition(".")[0] + "."):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports the private module {target}")
    assert offences == []
