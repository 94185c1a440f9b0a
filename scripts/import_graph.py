"""Print how unime's rooms import each other, and every cycle between its modules.

    python scripts/import_graph.py            # room -> rooms it imports (module level and inside functions)
    python scripts/import_graph.py --modules  # the same between modules

A room is a subpackage (``unime.training``) or a top-level module (``unime.modeling``). Imports
are read from the source (``ast``), so nothing is imported or run. The exit status is 1 when
modules, or rooms, import each other in a cycle (at module level or inside functions), else 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unime"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            # The longest known module the name starts with (``from unime.x import y`` may name a function).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("unime") and target != name:
                found.add(target)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="edges between modules, not rooms")
    args = parser.parse_args()
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    known = set(files)
    modules = {name: imports(path, name, known) for name, path in files.items()}
    # A package's __init__ is not an edge of its own modules (``unime.x.y`` importing ``unime.x``).
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in modules.items()}
    rooms: dict[str, set[str]] = defaultdict(set)
    for name, targets in graph.items():
        rooms[room(name)].update(room(t) for t in targets if room(t) != room(name))
    shown = graph if args.modules else rooms
    for name in sorted(shown):
        if shown[name] or not args.modules:
            print(f"{name} -> {', '.join(sorted(shown[name])) or '(nothing)'}")
    module_cycles, room_cycles = cycles(graph), cycles(rooms)
    for component in module_cycles:
        print("module cycle: " + " <-> ".join(component))
    for component in room_cycles:
        print("room cycle: " + " <-> ".join(component))
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} imports; "
          f"{len(module_cycles)} module cycles, {len(room_cycles)} room cycles")
    return 1 if module_cycles or room_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
