"""The package's layers point one way (docs/architecture.md): every import of a wubugen module, at module level or inside a
function, goes to its own layer or a lower one, and no two modules import each other, directly or around a loop."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module belongs to the first layer one of whose prefixes it matches
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("wubugen.errors", "wubugen.config", "wubugen.hyperbolic", "wubugen.gaad", "wubugen.media")),
    ("flow", ("wubugen.flow",)),  # optical-flow estimators and regional statistics: functions of tensors
    ("data", ("wubugen.data",)),
    ("models", ("wubugen.models",)),
    ("checkpoint", ("wubugen.checkpoint",)),  # saving and loading weights, below both training and evaluation
    ("eval/track", ("wubugen.eval", "wubugen.track")),
    ("train", ("wubugen.train",)),
    ("commands", ("wubugen.inspect_cmd", "wubugen.cli", "wubugen.__main__")),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    if name == "wubugen":
        return 0
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and docs/architecture.md")


def imports(path: Path, name: str) -> set[str]:
    """wubugen modules that `path` imports (absolute or relative, anywhere in the file)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m == "wubugen" or m.startswith("wubugen.")}


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in SRC.rglob("*.py")}
    g = {}
    for name, path in mods.items():
        # `from wubugen.x import y` names y when y is a module, else it means wubugen.x itself
        g[name] = {m for m in imports(path, name) if m in mods} - {name}
    return g


def test_every_import_points_to_the_same_or_a_lower_layer():
    upward = []
    for mod, deps in graph().items():
        for dep in deps:
            if layer_of(dep) > layer_of(mod):
                upward.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not upward, "\n".join(sorted(upward))


def test_models_import_nothing_from_data_train_eval_or_track():
    bad = [f"{m} -> {d}" for m, deps in graph().items() if m.startswith("wubugen.models")
           for d in deps if d.startswith(("wubugen.data", "wubugen.train", "wubugen.eval", "wubugen.track"))]
    assert not bad, bad


def test_no_import_cycles():
    g = graph()
    # package __init__ files re-export their modules; an edge into a package's own __init__ from inside it is not a
    # dependency of the design, so cycles are looked for between modules, packages' __init__ left out
    packages = {m for m in g if (SRC / m.replace(".", "/") / "__init__.py").exists()}
    edges = {m: {d for d in deps if d not in packages} for m, deps in g.items() if m not in packages}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
