"""The package's import graph: no cycle, no function-local import of a package module (the
usual way to dodge a cycle), no private name imported across modules. Run as a script it
prints the graph, layer by layer (what docs/architecture.md shows)."""
import ast
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = {"iteach_fast": os.path.join(ROOT, "iteach_fast"), "iteach_fast.kernels": os.path.join(ROOT, "kernels")}


def _modules() -> dict[str, str]:
    """``{dotted name: path}`` of every module of the package (kernels/ installs as iteach_fast.kernels)."""
    found = {}
    for package, folder in PACKAGES.items():
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                stem = name[:-3]
                found[package if stem == "__init__" else f"{package}.{stem}"] = os.path.join(folder, name)
    return found


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` pairs of one import statement."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    base = module if is_package else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    target = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
    return [(target, alias.name) for alias in node.names]


def import_graph():
    """``(edges, local_imports, private_names)`` over the package's own modules."""
    modules = _modules()
    edges, local, private = defaultdict(set), [], []
    for module, path in modules.items():
        tree = ast.parse(open(path).read(), path)
        function_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                          for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, name in _resolve(module, node, path.endswith("__init__.py")):
                submodule = f"{target}.{name}" if name else None
                hit = submodule if submodule in modules else target if target in modules else None
                if hit is None or hit == module:
                    continue
                edges[module].add(hit)
                if id(node) in function_nodes:
                    local.append(f"{module} imports {hit} inside a function")
                if name and name.startswith("_") and not name.startswith("__") and submodule not in modules:
                    private.append(f"{module} imports the private name {name} from {target}")
    return edges, local, private


def _cycle(edges) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layers(edges) -> list[list[str]]:
    """Modules grouped by depth: layer 0 imports no package module, layer n only lower layers."""
    depth = {}

    def d(m):
        if m not in depth:
            depth[m] = 1 + max((d(n) for n in edges.get(m, ())), default=-1)
        return depth[m]

    for m in _modules():
        d(m)
    out = defaultdict(list)
    for m, k in depth.items():
        out[k].append(m)
    return [sorted(out[k]) for k in sorted(out)]


def test_no_import_cycle():
    edges, _, _ = import_graph()
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_function_local_package_import():
    _, local, _ = import_graph()
    assert not local, "\n".join(local)


def test_no_private_name_imported_across_modules():
    _, _, private = import_graph()
    assert not private, "\n".join(private)


if __name__ == "__main__":
    graph, _, _ = import_graph()
    for k, layer in enumerate(layers(graph)):
        print(f"layer {k}:")
        for m in layer:
            uses = ", ".join(sorted(x.replace("iteach_fast.", "") for x in graph.get(m, ())))
            print(f"  {m.replace('iteach_fast.', '')}" + (f"  <- {uses}" if uses else ""))
    sys.exit(0)
