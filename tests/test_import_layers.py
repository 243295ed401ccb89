"""Imports point down the layers, never up and never in a circle (DESIGN.md): every import of
every module, function-local ones included (only `if TYPE_CHECKING:` blocks are skipped, they
never run), checked against the layer table. A failure names the importing module, the imported
one and both layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "marco_jax"

# Lower number = lower layer. A module may import its own package or any lower layer.
LAYERS: dict[str, int] = {
    "marco_jax.paths": 0, "marco_jax.config": 0, "marco_jax.platform": 0,
    "marco_jax.host_malloc": 0,
    "marco_jax.parallel": 1, "marco_jax.compile_cache": 1,
    "marco_jax.model": 2,
    "marco_jax.data": 3,
    "marco_jax.checkpoint": 4,
    "marco_jax.convert": 5, "marco_jax.train": 5,
    "marco_jax.infer": 6,
    "marco_jax.evals": 7,
}
CLI_LAYER = 8
CLI_MODULES = {"marco_jax.data.inspect"}  # CLIs living inside a package
TOP = "marco_jax"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> tuple[str, int]:
    """(the layer unit a module belongs to, its layer)."""
    if module.endswith(".__main__") or module in CLI_MODULES:
        return module, CLI_LAYER
    best = max((u for u in LAYERS if module == u or module.startswith(u + ".")), key=len,
               default=None)
    if best is not None:
        return best, LAYERS[best]
    if module == TOP:
        return TOP, 0
    return module, CLI_LAYER  # marco_jax/<verb>.py: the thin CLIs


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported marco_jax module, line) for every import statement that can run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names if a.name.startswith(TOP))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith(TOP):
                # `from pkg import module` imports the module; `from module import name` the
                # module itself.
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out.append((sub if _is_module(sub) else target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel.with_suffix(".py")).exists() or (ROOT / rel / "__init__.py").exists()


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_imports_only_point_down():
    problems = []
    for name, path in sorted(all_modules().items()):
        unit, layer = unit_of(name)
        for target, line in imports_of(path):
            t_unit, t_layer = unit_of(target)
            if t_unit == unit or target == TOP or (unit == TOP and t_layer == 0):
                continue  # own unit; the top package's __init__ may set up leaf utilities
            if t_layer > layer or (t_layer == layer and t_unit != unit):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {name} (layer {layer}, "
                                f"{unit}) imports {target} (layer {t_layer}, {t_unit})")
    assert not problems, "upward or sideways imports:\n" + "\n".join(problems)


def test_no_import_cycles():
    modules = all_modules()
    graph = {name: sorted({t for t, _ in imports_of(path) if t in modules and t != name})
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    graph = {n: [t for t in ts if not (n == t.rpartition(".")[0] or t == n.rpartition(".")[0]
                                      and _is_package_init(modules[t]))]
             for n, ts in graph.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_package_init(path: Path) -> bool:
    return path.name == "__init__.py"


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_the_checker_catches_an_upward_import(tmp_path):
    """The rule itself: model (layer 2) importing train (layer 5) is reported."""
    assert unit_of("marco_jax.model.qwen2") == ("marco_jax.model", 2)
    assert unit_of("marco_jax.train.loop")[1] > unit_of("marco_jax.model.qwen2")[1]
    assert unit_of("marco_jax.train.__main__") == ("marco_jax.train.__main__", CLI_LAYER)
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
