"""The package's modules import one another without a circle, counting imports inside functions
too, and the core imports nothing from the app."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tarflow"


def imported_modules(path: Path) -> set[str]:
    """The tarflow modules a file imports anywhere in it ("tarflow" is the package's __init__)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path.name}: relative import"
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "app":
                found.add("app")
            elif parts[0] == "tarflow":
                found.add(parts[1] if len(parts) > 1 and parts[1] in modules else "__init__")
    return found


def graph() -> dict[str, set[str]]:
    return {p.stem: imported_modules(p) - {p.stem} for p in PACKAGE.glob("*.py")}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first = last), or None (a depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        path = path + [node]
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done and (cycle := visit(nxt, path)):
                return cycle
        done.add(node)
        return None

    for node in sorted(edges):
        if node not in done and (cycle := visit(node, [])):
            return cycle
    return None


def test_no_import_circle_in_the_package():
    edges = graph()
    assert edges["model"] == set()  # the network needs no other part of the package
    assert "engine" in edges["sampling"] and "model" in edges["engine"]
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_core_does_not_import_the_app():
    assert not any("app" in deps for deps in graph().values())


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
