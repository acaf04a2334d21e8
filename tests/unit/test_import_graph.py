"""The import graph of picserve, read from the source (every import, lazy ones too): no module imports
itself back through others, and every room imports only the rooms below it (`LAYERS`).

A room is a top-level module or package of picserve (`api`, `tasks`, `engine`, `errors`, …). When a
new room is added, place it in `LAYERS`: the test fails on a room it does not know.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import picserve

SRC = Path(picserve.__file__).parent

#: rooms, bottom to top: a room may import its own modules and the rooms of lower layers, never higher
LAYERS: list[tuple[str, ...]] = [
    # the floor: errors, settings, values, outages; each imports nothing of picserve above it
    ("errors",),
    ("config", "domain", "logs", "resilience", "torchvision_compat"),
    # the image toolkit's task specs, registered with the domain's union (tasks/ imports it for them)
    ("domain_tools",),
    # leaf helpers: keys, model headers, translation, storage, the wire format, the page
    ("keycipher", "modelinfo", "reference_images", "download", "translate", "storage", "protocol", "playground"),
    # what the headers of ControlNet preprocessors' and IP-Adapters' files say
    ("preprocessors", "ipadapter_info"),
    ("catalog", "admission", "sdk"),
    ("modelfiles", "engine"),
    # model folders (SAM, captioners) filed as model files are (it takes modelfiles' sidecar and Added)
    ("modelfolders",),
    # durable task state (repositories, migrations, recovery, retention)
    ("tasks",),
    # what runs on it: metrics, webhook deliveries, the worker wing
    ("metrics", "webhooks"),
    # what a worker runs itself besides its engine's pipelines: ImportModel's download and filing
    ("model_import",),
    ("worker",),
    # the API process: its services, the task kinds' checks, the one submission path, the HTTP layer
    ("services",),
    ("specs", "chaining"),
    ("submission",),
    ("api",),
    # processes and the command line
    ("supervisor",),
    ("demo",),
    ("cli",),
    ("__main__", "picserve"),
]

#: the imports that cross the layers upward, each with its reason (keep it short)
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("engine", "picserve"): "the PNG text names picserve's version (picserve.__version__)",
    ("api", "picserve"): "OpenAPI and /health name picserve's version",
    ("playground", "picserve"): "the page names picserve's version",
    ("cli", "picserve"): "`picserve --version` prints it",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """picserve module → the picserve modules it imports (anywhere in it: lazy imports count)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}

    def resolve(name: str) -> str:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "picserve")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.split(".")[0] != "picserve":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in files else resolve(base))
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "picserve"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """The import graph, parsed once for the tests below (each parse reads every module: 0.5 s)."""
    return import_graph()


def test_no_module_imports_itself_back(graph):
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_room_imports_only_the_rooms_below_it(graph):
    rank = {name: level for level, names in enumerate(LAYERS) for name in names}
    unknown = sorted({room(m) for m in graph} - set(rank))
    assert unknown == [], f"rooms missing from LAYERS: {unknown}"
    upward = sorted(
        f"{module} → {target}"
        for module, targets in graph.items()
        for target in targets
        if room(module) != room(target)
        and rank[room(target)] >= rank[room(module)]
        and (room(module), room(target)) not in ALLOWED_UPWARD
    )
    assert upward == [], "imports against the layering (move the helper down, or the importer up):\n" + "\n".join(
        upward
    )


def test_every_allowed_exception_is_still_needed(graph):
    used = {(room(m), room(t)) for m, targets in graph.items() for t in targets}
    assert sorted(set(ALLOWED_UPWARD) - used) == []
