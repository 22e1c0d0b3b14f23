"""The architecture as the imports say it: one way down, no cycle.

    kernels/            the backends (Triton, CPU) and their reference: import nothing above them
    rnnkit/             layers, functional, operators, autograd, backends, training: kernels and itself
    diagnostics/        what the backward pass records, and the observers of training: rnnkit, never
                        the kernels
    cli.py, tools/      parse and render: anything

and a backend's private modules (`kernels._*`, `kernels.cpu._*`) are imported only inside `kernels/`
and by `rnnkit/backends.py`, the one place that chooses among backends (tools/ are kernel probes).

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
    top = module.split(".")[0]
    return top if top in ("kernels", "rnnkit", "diagnostics") else "app"


ALLOWED = {
    "kernels": {"kernels"},
    "rnnkit": {"kernels", "rnnkit"},
    "diagnostics": {"rnnkit", "diagnostics"},
    "app": {"kernels", "rnnkit", "diagnostics", "app"},
}


def _private_kernel_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "kernels" and any(p.startswith("_") and p != "__init__" for p in parts[1:])


def test_no_import_goes_up():
    upward = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer(target) not in ALLOWED[_layer(module)]
    ]
    assert not upward, "\n".join(upward)


def test_only_kernels_and_the_backend_registry_import_private_kernel_modules():
    outside = [
        f"{module} imports {target}"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _private_kernel_module(target)
        and _layer(module) != "kernels"
        and module != "rnnkit.backends"
        and not module.startswith("tools")
    ]
    assert not outside, "\n".join(outside)


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
    assert "rnnkit.train.run" in graph["diagnostics.training"]
    assert {"kernels._cells", "kernels._config", "kernels._tiles"} <= graph["kernels.split"]
    assert "kernels.cpu._onednn" in graph["kernels.cpu"]
    assert _private_kernel_module("kernels.cpu._step") and not _private_kernel_module("kernels.cpu")
