"""The package's internal import graph, read from the source with ``ast`` (nothing is imported).

Every ``import`` / ``from … import`` statement counts, at module level or inside a function
(a lazy import is still a dependency), and so do the modules a registry names by string
(``importlib.import_module`` of a constant, the ``COMMAND_MODULES`` / ``SECTIONS`` tables).
``from .x import y`` resolves to ``pkg.x.y`` when that is a module, else ``pkg.x``; the implicit
import of a parent package is not an edge (it would make every package a cycle with its members).

Run as a script for the table of the issue-13 note::

    python tests/scripts/import_graph.py            # module -> internal imports, cycles, engine users
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("interp", "probes")
#: modules that are methods (they must ask the model for capabilities, never for engines)
METHOD_PACKAGES = ("interp.mediation", "interp.attention", "interp.neurons", "interp.concepts",
                   "interp.probes", "probes")


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        base = root / pkg
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def _string_imports(tree: ast.AST) -> list[str]:
    """Module names given as string constants to importlib or in registry tables."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append(node.args[0].value)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value
            if v.count(".") >= 1 and v.split(".")[0] in PACKAGES and all(p.isidentifier() for p in v.split(".")):
                out.append(v)
    return out


def imports(mods: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module -> the internal modules it imports (statically or by a constant string)."""
    mods = mods or modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_pkg = path.name == "__init__.py"
        pkg_parts = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    r = _resolve(a.name, mods)
                    if r:
                        deps.add(r)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg_parts[:len(pkg_parts) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for a in node.names:
                    r = _resolve(f"{mod}.{a.name}", mods) if f"{mod}.{a.name}" in mods else _resolve(mod, mods)
                    if r:
                        deps.add(r)
        for s in _string_imports(tree):
            r = _resolve(s, mods)
            if r:
                deps.add(r)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def engine_users(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Method modules that import an engine module."""
    return {m: sorted(d for d in deps if d.startswith("interp.engines"))
            for m, deps in graph.items()
            if m.startswith(METHOD_PACKAGES) and any(d.startswith("interp.engines") for d in deps)}


def engine_name_branches(mods: dict[str, Path] | None = None) -> dict[str, list[int]]:
    """Lines outside the core that compare ``engine_name`` with something (a branch on an engine)."""
    mods = mods or modules()
    out = {}
    for name, path in mods.items():
        if name.startswith("interp.engines"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Compare)
                 and any(isinstance(x, ast.Attribute) and x.attr == "engine_name"
                         for x in [n.left, *n.comparators])]
        if lines:
            out[name] = sorted(lines)
    return out


def main() -> None:
    mods = modules()
    g = imports(mods)
    short = {m: m for m in g}
    print("| module | imports (internal) |")
    print("|---|---|")
    for m in sorted(g):
        print(f"| {short[m]} | {', '.join(sorted(g[m])) or '—'} |")
    cyc = cycles(g)
    print(f"\ncycles ({len(cyc)}):")
    for c in cyc:
        print("  " + " <-> ".join(c))
    print(f"\nmethod modules importing an engine: {engine_users(g) or 'none'}")
    print(f"comparisons on engine_name outside interp.engines: {engine_name_branches(mods) or 'none'}")


if __name__ == "__main__":
    main()
