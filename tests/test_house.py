"""The house's shape, read from the source (no imports run): the packages' layers hold, no module
imports itself round a circle, no private name crosses a module, and files and lines stay short.

orchestrator (configs, Ray, the CLI) imports models (the networks and their layout) and shards (reading
and writing shards); those two never import each other or orchestrator (docs/DESIGN.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {"shards": {"shards"}, "models": {"models"}, "orchestrator": {"orchestrator", "models", "shards"}}
MAX_LINES = 320  # "at most about 300" (STYLE.md): a file reads in a sitting


def modules() -> dict[str, Path]:
    found = {}
    for package in MAY_IMPORT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def bare(name: str) -> str:
    """The module's name without the cnnctl. namespace the code imports it by."""
    return "" if name == "cnnctl" else name.removeprefix("cnnctl.")


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in the file, lazy ones too."""
    tree = ast.parse(path.read_text(), str(path))
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(bare(alias.name), [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = bare(node.module or "")
            names = [alias.name for alias in node.names]
            # `from package import module` imports the module itself
            subs = [f"{target}.{n}".lstrip(".") for n in names if f"{target}.{n}".lstrip(".") in MODULES]
            found += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{target}.{n}".lstrip(".") not in MODULES]
            if rest:
                found.append((target, rest, node.lineno))
    return [(m, names, line) for m, names, line in found if m.split(".")[0] in MAY_IMPORT]


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        edges[name] = {m for m, _, _ in imports(path) if m in MODULES and m != name}
    return edges


def test_the_packages_are_imported_through_the_cnnctl_namespace():
    """`import models` would find a user's own package first (cnnctl/__init__.py)."""
    folders = ("orchestrator", "models", "shards", "bench", "tests")
    files = [p for d in folders for p in sorted((ROOT / d).rglob("*.py"))]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in MAY_IMPORT]
    assert found == []


def test_imports_run_one_way():
    against = [f"{MODULES[a].relative_to(ROOT)}:{line}: imports {m}"
               for a, path in MODULES.items() for m, _, line in imports(path)
               if m.split(".")[0] not in MAY_IMPORT[a.split(".")[0]]]
    assert against == []


def test_no_import_circle():
    edges, state, circles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_no_private_name_crosses_a_module():
    crossing = [f"{path.relative_to(ROOT)}:{line}: {n} from {m}"
                for name, path in MODULES.items() for m, names, line in imports(path)
                for n in names if n.startswith("_") and not n.startswith("__") and m != name]
    assert crossing == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_source_file_fits_in_a_sitting(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})"
