"""The package's import graph: the tiers (each subpackage imports only its own tier and those
below), no cycle, no function-local import of a package module (the usual way to dodge a
cycle), no private name imported across modules. Run as a script it prints the graph, layer
by layer (what docs/architecture.md shows)."""
import ast
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = {"iteach_fast": os.path.join(ROOT, "iteach_fast"), "iteach_fast.kernels": os.path.join(ROOT, "kernels")}


#: the tiers, bottom up: a module may import modules of its own tier or a lower one only
TIERS = (
    ("leaves", ("iteach_fast.choices", "iteach_fast.files", "iteach_fast.checks", "iteach_fast.presets")),
    ("ops", ("iteach_fast.ops", "iteach_fast.kernels", "iteach_fast")),  # the package's face imports ops only
    ("nn", ("iteach_fast.nn",)),
    ("data", ("iteach_fast.data",)),
    ("training", ("iteach_fast.training",)),
    ("evaluation", ("iteach_fast.evaluation",)),
    ("reproduce", ("iteach_fast.reproduce",)),
    ("cli", ("iteach_fast.cli", "iteach_fast.__main__")),
)


def tier(module: str) -> int:
    """The rank of ``module``'s tier in :data:`TIERS` (the longest matching prefix decides)."""
    best, rank = -1, None
    for k, (_, prefixes) in enumerate(TIERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), k
    assert rank is not None, f"{module} belongs to no tier: add it to TIERS"
    return rank


def _modules() -> dict[str, str]:
    """``{dotted name: path}`` of every module of the package, subpackages included
    (kernels/ installs as iteach_fast.kernels)."""
    found = {}
    for package, folder in PACKAGES.items():
        for dirpath, dirnames, files in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if os.path.isfile(os.path.join(dirpath, d, "__init__.py")))
            sub = os.path.relpath(dirpath, folder)
            prefix = package if sub == "." else f"{package}.{sub.replace(os.sep, '.')}"
            for name in sorted(files):
                if name.endswith(".py"):
                    stem = name[:-3]
                    found[prefix if stem == "__init__" else f"{prefix}.{stem}"] = os.path.join(dirpath, name)
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


def tier_violations(edges) -> list[str]:
    return [f"{m} ({TIERS[tier(m)][0]}) imports {n} ({TIERS[tier(n)][0]}), a higher tier"
            for m, targets in sorted(edges.items()) for n in sorted(targets) if tier(n) > tier(m)]


def test_every_module_imports_only_its_tier_and_below():
    edges, _, _ = import_graph()
    assert len(_modules()) > 30  # the walk found the subpackages
    problems = tier_violations(edges)
    assert not problems, "\n".join(problems)


def test_the_tier_check_finds_a_back_arrow():
    edges = {"iteach_fast.ops.reference": {"iteach_fast.nn.modules"}, "iteach_fast.nn.model": {"iteach_fast.ops"}}
    assert tier_violations(edges) == [
        "iteach_fast.ops.reference (ops) imports iteach_fast.nn.modules (nn), a higher tier"]


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
    for name, prefixes in TIERS:
        print(f"tier {name}: {', '.join(p.replace('iteach_fast.', '') for p in prefixes)}")
    for k, layer in enumerate(layers(graph)):
        print(f"layer {k}:")
        for m in layer:
            uses = ", ".join(sorted(x.replace("iteach_fast.", "") for x in graph.get(m, ())))
            print(f"  {m.replace('iteach_fast.', '')}" + (f"  <- {uses}" if uses else ""))
    sys.exit(0)
