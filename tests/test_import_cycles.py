"""No import cycle inside keras_robust_iqa, function-level imports included.

Every module is parsed with `ast`; each `import` / `from ... import` of a keras_robust_iqa
module, wherever it stands in the file, is an edge to the module it names (a name imported
from a package that is not a submodule is an edge to the package's `__init__`). A cycle in
that graph is a pair of stages that reach into each other.
"""

import ast
import importlib.util
import pathlib

# Found without importing it (no TensorFlow start-up for a test that reads files).
PACKAGE = pathlib.Path(importlib.util.find_spec("keras_robust_iqa").origin).parent


def module_names():
    """`{dotted name: path}` of every module of the package."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph():
    """`{module: set of keras_robust_iqa modules it imports}`."""
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `from . import x` is the package itself
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph):
    """Every elementary cycle found by depth-first search, each once, as a list of modules."""
    cycles, seen = [], set()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # `pruning.surgery.prune` imports `pruning.graph` inside the function.
    assert "keras_robust_iqa.pruning.graph" in graph["keras_robust_iqa.pruning.surgery"]
    assert "keras_robust_iqa.layers.contract" in graph["keras_robust_iqa.layers.keras_rules"]


def test_find_cycles_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
