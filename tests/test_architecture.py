"""The package's import graph, read from the source with `ast` (nothing is imported).

Two rules keep the layering visible in each file's header: no import cycle among mlprunner
modules, and every import of an mlprunner module at module level (a function-local import
hides a dependency and is how cycles creep back in). Lazy imports of heavy third-party
packages inside functions are fine and not checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "mlprunner"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(SRC).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` runs only when the file is executed as a script; the module
    is then `__main__`, not its mlprunner name, so its imports form no cycle."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports_of(name: str, path: Path, modules: dict[str, Path]):
    """(imported mlprunner module, line, module-level?) for every import in the file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name == PACKAGE or a.name.startswith(PACKAGE + ".")]
        if node.level:  # relative: from . import x, from .x import y, from ..x import y
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            base = ".".join(base)
            if node.module:
                base = f"{base}.{node.module}"
        elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
            base = node.module
        else:
            return []
        # `from pkg import x` imports the module pkg.x when there is one, else a name of pkg
        found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        return list(dict.fromkeys(found))

    def visit(node, top_level: bool):
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child) or _is_type_checking_block(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in targets(child):
                    yield target, child.lineno, top_level
            inner = top_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            )
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(), filename=str(path)), True)


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in imports_of(name, path, modules):
            if target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component with a cycle."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []

    def connect(v):  # Tarjan; the graph has a few dozen nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in graph.get(v, ()):
                sccs.append(set(scc))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    found = []
    for scc in sccs:
        start = min(scc)
        # breadth-first back to `start` inside the component: the shortest cycle through it
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(w for w in graph[path[-1]] if w in scc)
            if start in nxt:
                found.append(path + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
        found[-1].append(f"({len(scc)} modules in this circle: {', '.join(sorted(scc))})")
    return found


def test_graph_is_read():
    graph = import_graph()
    assert "mlprunner.cli" in graph and "mlprunner.errors" in graph
    assert "mlprunner.errors" in graph["mlprunner.checkpoint"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles among mlprunner modules:\n" + "\n".join(
        " -> ".join(c[:-1]) + "  " + c[-1] for c in found
    )


def test_no_function_local_imports_of_mlprunner_modules():
    modules = all_modules()
    local = [
        f"{path.relative_to(SRC.parents[1])}:{line}: imports {target}"
        for name, path in modules.items()
        for target, line, top_level in imports_of(name, path, modules)
        if not top_level
    ]
    assert not local, (
        "imports of mlprunner modules inside functions or classes (move them to "
        "the top of the file):\n" + "\n".join(local)
    )


def test_entry_points_sit_on_top():
    """Only `python -m mlprunner` imports the console tools; the Hydra callbacks are named in the
    config (hydra.callbacks), never imported by the library."""
    graph = import_graph()
    importers = {m for m, targets in graph.items() if "mlprunner.cli" in targets}
    assert importers <= {"mlprunner.__main__"}, importers
    assert not {m for m, targets in graph.items() if "mlprunner.hydra_callbacks" in targets}
    assert graph["mlprunner.errors"] == set()


def test_hydra_plugins_use_the_library_not_the_entry_points():
    """The launcher and sweeper plugins (src/hydra_plugins) run inside Hydra, in sweep workers and
    SLURM jobs: they build on mlprunner's library modules, never on its console entry point."""
    plugins = SRC.parent / "hydra_plugins"
    found = []
    for path in sorted(plugins.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(plugins)}:{node.lineno}: {n}" for n in names if n in ENTRY_POINTS]
    assert not found, found


ENTRY_POINTS = {"mlprunner.cli", "mlprunner.__main__", "mlprunner.hydra_callbacks"}
