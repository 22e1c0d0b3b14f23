"""The architecture as the imports say it: one way down, no cycle.

    kernels/            the Triton kernels and their reference: import nothing above them
    rnnkit/ (the core)  layers, functional, operators, autograd, backends: kernels and themselves
    diagnostics/        what the backward pass records: the core, never the kernels
    rnnkit/train/       training runs: the core and diagnostics
    cli.py, tools/      parse and render: anything

Every import counts, at module level or inside a function, read from the source (no module is run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("kernels", "rnnkit", "diagnostics", "cli", "tools")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    tops = ("kernels", "rnnkit", "diagnostics", "tools")
    files = [ROOT / "cli.py", *(p for top in tops for p in (ROOT / top).rglob("*.py"))]
    return {_module_name(p): p for p in files}


def _imports(path: Path, known: set[str]) -> set[str]:
    # the project modules a file imports: `from a.b import c` is a.b.c where that is a module, else a.b
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]  # fmt: skip
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PROJECT and n in known)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def _layer(module: str) -> str:
    if module.startswith("kernels"):
        return "kernels"
    if module.startswith("rnnkit.train"):
        return "train"
    if module.startswith("rnnkit"):
        return "core"
    if module.startswith("diagnostics"):
        return "diagnostics"
    return "app"


ALLOWED = {
    "kernels": {"kernels"},
    "core": {"kernels", "core"},
    "diagnostics": {"core", "diagnostics"},
    "train": {"core", "diagnostics", "train"},
    "app": {"kernels", "core", "diagnostics", "train", "app"},
}


def test_no_import_goes_up():
    upward = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer(target) not in ALLOWED[_layer(module)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_is_read():
    """The reader sees the arrows it should (so the two tests above cannot pass on an empty graph)."""
    graph = _graph()
    assert "rnnkit.ops" in graph["rnnkit.functional"]
    assert "kernels.reference" in graph["rnnkit.autograd"]
    assert "rnnkit.autograd" in graph["diagnostics.recorder"]
    assert "diagnostics" in graph["rnnkit.train.loop"]
    assert {"kernels._cells", "kernels._config", "kernels._tiles"} <= graph["kernels.split"]
