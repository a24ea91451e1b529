"""The package's layers point down only, and no module imports itself in a circle.

A module may import from its own layer or a lower one (see README "Architecture"):

    7  runtime, cli            process wiring, the admin endpoint, the commands
    6  webui, demo             pages over the store; the reference model server and traffic
    5  alerts                  rules over check results, channels, the outbox
    4  checks,                 drift, quality, SLO and canary checks over the store; model comparisons;
       governance              the audit log, erasure of one person's rows
    3  sidecar, receiver,      the sources (capture proxy, scraper, NVML, OTLP receiver)
       ingest                  and the stage that stores what they produced
    2  store, transport        ClickHouse; the spool, Kafka
    1  otlp, quality,          the wire format; pure signals over text and requests
       redaction
    0  errors, extras, config, events, backoff, selfmetrics, status, instrument, auth, the package root
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "monitor"

LAYERS = {
    **dict.fromkeys(["", "errors", "extras", "config", "events", "backoff", "selfmetrics", "status", "instrument",
                     "auth"], 0),
    **dict.fromkeys(["otlp", "quality", "redaction"], 1),
    **dict.fromkeys(["store", "transport"], 2),
    **dict.fromkeys(["sidecar", "receiver", "ingest"], 3),
    **dict.fromkeys(["checks", "governance"], 4),
    "alerts": 5,
    **dict.fromkeys(["webui", "demo"], 6),
    **dict.fromkeys(["runtime", "cli", "__main__"], 7),
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(f: Path) -> set[str]:
    """What ``f`` imports at run time (imports under ``if TYPE_CHECKING:`` are for type hints only)."""
    tree = ast.parse(f.read_text())
    hints = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hints.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m == "monitor" or m.startswith("monitor.")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_part_of_the_package_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units - set(LAYERS) == set(), "give the new part a layer in LAYERS (and the README)"


def test_imports_point_down_only():
    up = []
    for name, f in _modules().items():
        here = LAYERS[_unit(name)]
        for target in _imports(f):
            there = LAYERS.get(_unit(target))
            if there is not None and there > here:
                up.append(f"{name} (layer {here}) imports {target} (layer {there})")
    assert sorted(set(up)) == []


def test_no_import_circles_between_modules():
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, f in mods.items():
        for target in _imports(f):
            while target and target not in mods:  # `from monitor.x import name`: the module is monitor.x
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
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
            # a package and its own submodules (an __init__ re-exporting them) are not a circle
            if len(comp) > 1 and len({c.split(".")[1] if c.count(".") else c for c in comp}) > 1 or \
                    len(comp) > 1 and not all(c.startswith(min(comp, key=len)) for c in comp):
                circles.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10_000)
    for v in list(mods):
        if v not in index:
            visit(v)
    assert circles == []
