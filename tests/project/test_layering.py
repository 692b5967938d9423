"""The package's shape: no import cycle, imports point down the layers, receiving stands alone.

Imports under ``TYPE_CHECKING`` count: a cycle that only type checkers see is still a
value type living above its user.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A module may import its own layer and the ones before it, never later ones.
# A name covers the module and, for a package, everything in it.
LAYERS: list[set[str]] = [
    {"flnotify._version", "flnotify._exceptions"},
    {"flnotify._schema"},
    {"flnotify._validators", "flnotify._closing", "flnotify._seams", "flnotify._loops"},
    {"flnotify._portal"},
    {"flnotify._types", "flnotify._http", "flnotify._web"},
    {"flnotify._notification"},
    {"flnotify._training", "flnotify._codec"},
    {
        "flnotify.signing",
        "flnotify.endpoints",
        "flnotify._sqlite",
        "flnotify._postgres",
        "flnotify._lease",
        "flnotify.mailbox._wire",
    },
    {
        "flnotify._retry",
        "flnotify._report",
        "flnotify._handle",
        "flnotify.transports",
        "flnotify.health",
    },
    {
        "flnotify.repository",
        "flnotify._repository_contract",
        "flnotify._hooks",
        "flnotify.mailbox._store",
    },
    {"flnotify.callbacks"},
    {"flnotify._attempt"},
    {"flnotify._engine"},
    {"flnotify.mailbox._route"},
    {"flnotify._notifier"},
    {"flnotify.outbox", "flnotify.contrib", "flnotify.receiving", "flnotify.mailbox"},
    {"flnotify.testing", "flnotify._demo", "flnotify._outbox_cli"},
    {"flnotify.cli", "flnotify", "flnotify.__main__", "flnotify.errors", "flnotify.codec"},
]

SENDING = {
    "flnotify._attempt",
    "flnotify._engine",
    "flnotify._notifier",
    "flnotify._retry",
    "flnotify._report",
    "flnotify._hooks",
    "flnotify.callbacks",
    "flnotify.transports",
    "flnotify.outbox",
    "flnotify.mailbox",
    "flnotify.contrib",
    "flnotify.repository",
}

# The mailbox's wire format is what the sending side and a polling client both speak.
BOTH_SIDES = {"flnotify.mailbox._wire"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every flnotify module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "flnotify")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "flnotify":
                continue
            submodules = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            found.update(submodules)  # "from . import x" naming a submodule imports it
            if len(submodules) < len(node.names):
                found.add(target)
    found.discard(name)
    return found


MODULES = {module_name(p): p for p in (SRC / "flnotify").rglob("*.py")}
GRAPH = {name: imports_of(path) & set(MODULES) for name, path in MODULES.items()}


def layer_of(name: str) -> int:
    best: tuple[int, int] | None = None  # (length of the matching entry, layer)
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if (name == entry or name.startswith(entry + ".")) and (
                best is None or len(entry) > best[0]
            ):
                best = (len(entry), index)
    assert best is not None, f"{name} is in no layer: add it to LAYERS in {__file__}"
    return best[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert cycles(GRAPH) == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if not target.startswith(name + ".") and layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_receiving_imports_nothing_of_the_sending_side() -> None:
    def sending(target: str) -> bool:
        if target in BOTH_SIDES:
            return False
        return any(target == s or target.startswith(s + ".") for s in SENDING)

    receiving = [
        n for n in GRAPH if n == "flnotify.receiving" or n.startswith("flnotify.receiving.")
    ]
    assert receiving
    assert [(n, t) for n in receiving for t in sorted(GRAPH[n]) if sending(t)] == []


def test_the_error_module_imports_nothing_of_flnotify() -> None:
    assert GRAPH["flnotify._exceptions"] == set()


def test_no_module_imports_another_modules_underscore_names() -> None:
    """``from x._mod import name`` is fine; ``from x import _name`` (module or not) is not.

    A private module is reached by its path; what another module keeps private (a function,
    a class, a module it hides behind ``__getattr__``) is a seam that was never declared.
    """
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                source = node.module or ""
            if source.split(".")[0] != "flnotify":
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    wrong.append(f"{name} imports {alias.name} from {source}")
    assert wrong == []
