"""The package's shape: no import cycle, no private name used across modules, every
exception class in errors.py.

Imports inside functions count as much as module-level ones: a cycle held
together by a function-level import still ties the modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "digitbatch"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, level: int, target: str | None) -> str:
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    if level:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(module: str) -> tuple[set[str], list[str]]:
    """Modules of the package ``module`` imports, and the private names it takes from them."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    deps: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # local name -> package module it names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("digitbatch"):
                    deps.add(a.name)
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            src = (_resolve(module, node.level, node.module) if node.level
                   else node.module or "")
            if not src.startswith("digitbatch"):
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                if sub in MODULES:  # `from . import storage`: the submodule
                    deps.add(sub)
                    aliases[a.asname or a.name] = sub
                else:
                    deps.add(src)
                    if _private(a.name):
                        private.append(f"{module} imports {a.name} from {src}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _private(node.attr)
                and aliases[node.value.id] != module):
            private.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
    deps.discard(module)
    return {d for d in deps if d in MODULES}, private


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    graph = {m: deps for m, (deps, _) in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_crosses_a_module():
    assert [p for _, (_, priv) in GRAPH.items() for p in priv] == []


def test_every_exception_class_lives_in_errors():
    stray = []
    for m, p in MODULES.items():
        if m == "digitbatch.errors":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception")))
                    or (isinstance(b, ast.Attribute) and b.attr.endswith(("Error", "Exception")))
                    for b in node.bases):
                stray.append(f"{m}.{node.name}")
    assert stray == []
