"""Circuit rows (as the circuits tables store them) turned into a drawable graph.

The circuits tables come from their own issue; this module reads their rows by column role
(which column is the layer, the effect, the upstream node, ...) through short lists of likely
names, so the page keeps working if a column is named a little differently.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

ROLES = {
    "circuit": ("circuit_id", "id", "run_id"),
    "node_id": ("node_id", "node", "id"),
    "layer": ("layer",),
    "submodule": ("submodule", "component", "hook", "site"),
    "feature": ("feature", "latent", "feature_id"),
    "error": ("is_error", "error", "error_node"),
    "position": ("position", "pos"),
    "effect": ("effect", "attribution", "score", "value"),
    "sae": ("sae_id", "sae"),
}
_UP = ("src_", "source_", "up_", "upstream_", "from_")
_DOWN = ("dst_", "target_", "down_", "downstream_", "to_")
_SUBMODULE_ORDER = {"attn": 0, "attn_out": 0, "mlp": 1, "mlp_out": 1, "resid": 2, "resid_post": 2}


def column(row: dict, role: str, prefixes: tuple[str, ...] = ("",)) -> str | None:
    for prefix in prefixes:
        for name in ROLES[role]:
            if prefix + name in row:
                return prefix + name
        if prefix and prefix.rstrip("_") in row and role == "node_id":
            return prefix.rstrip("_")
    return None


def get(row: dict, role: str, prefixes: tuple[str, ...] = ("",)):
    name = column(row, role, prefixes)
    return row.get(name) if name else None


@dataclass
class Node:
    key: tuple
    layer: int
    submodule: str
    feature: int | None
    effect: float
    sae_id: str | None
    label: str
    x: float = 0.0
    y: float = 0.0


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[tuple[Node, Node, float]] = field(default_factory=list)
    columns: list[tuple[int, str]] = field(default_factory=list)


def _submodule(value) -> str:
    text = str(value or "resid")
    for name in ("attn", "mlp", "resid"):
        if name in text:
            return name
    return text


def _node_key(layer, submodule, feature, position) -> tuple:
    return (int(layer or 0), _submodule(submodule), feature, position)


def _feature(row: dict, prefixes=("",)) -> int | None:
    f = get(row, "feature", prefixes)
    err = get(row, "error", prefixes)
    if err or f is None or (isinstance(f, (int, float)) and f < 0):
        return None
    return int(f)


def build_graph(nodes: list[dict], edges: list[dict]) -> Graph:
    """Place nodes in columns (layer, then attn < mlp < resid), by effect within a column."""
    by_id: dict = {}
    by_key: dict = {}
    out: list[Node] = []
    for row in nodes:
        if row.get("kept") is False:  # stored for the record, outside the circuit
            continue
        layer, sub = get(row, "layer"), _submodule(get(row, "submodule"))
        feature, pos = _feature(row), get(row, "position")
        effect = float(get(row, "effect") or 0.0)
        key = _node_key(layer, sub, feature, pos)
        label = f"L{layer} {sub} " + (f"#{feature}" if feature is not None else "ε")
        if pos is not None and not (isinstance(pos, (int, float)) and pos < 0):
            label += f" @{pos}"
        node = Node(key, int(layer or 0), sub, feature, effect, get(row, "sae"), label)
        out.append(node)
        by_key[key] = node
        node_id = get(row, "node_id")
        if node_id is not None:
            by_id[node_id] = node
    graph = Graph(out)
    for row in edges:
        up = _edge_end(row, _UP, by_id, by_key)
        down = _edge_end(row, _DOWN, by_id, by_key)
        if up is not None and down is not None:
            graph.edges.append((up, down, float(get(row, "effect") or 0.0)))
    graph.columns = sorted({(n.layer, n.submodule) for n in out}, key=_column_order)
    for x, col in enumerate(graph.columns):
        members = sorted(
            (n for n in out if (n.layer, n.submodule) == col), key=lambda n: -abs(n.effect)
        )
        for y, n in enumerate(members):
            n.x, n.y = float(x), float(-y)
    return graph


def _column_order(col: tuple[int, str]) -> tuple:
    return (col[0], _SUBMODULE_ORDER.get(col[1], 3), col[1])


def _edge_end(row: dict, prefixes, by_id, by_key) -> Node | None:
    node_id = get(row, "node_id", prefixes)
    if node_id is not None and node_id in by_id:
        return by_id[node_id]
    layer = get(row, "layer", prefixes)
    if layer is None:
        return None
    key = _node_key(
        layer,
        get(row, "submodule", prefixes),
        _feature(row, prefixes),
        get(row, "position", prefixes),
    )
    if key in by_key:
        return by_key[key]
    return next((n for k, n in by_key.items() if k[:3] == key[:3]), None)


def node_size(effect: float, largest: float) -> float:
    return 8.0 + 26.0 * math.sqrt(abs(effect) / largest) if largest > 0 else 10.0


def curves_from(circuit: dict, curve_rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Faithfulness/completeness curves: from a curves table, else from JSON columns."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in curve_rows:
        name = next((r[c] for c in ("curve", "kind", "metric", "name") if c in r), None)
        x = next((r[c] for c in ("n_nodes", "size", "n", "k", "threshold") if c in r), None)
        y = next((r[c] for c in ("value", "score", "faithfulness") if c in r), None)
        if name is not None and x is not None and y is not None:
            curves.setdefault(str(name), []).append((float(x), float(y)))
    for key, value in circuit.items():
        if curves or not isinstance(value, str) or not key.endswith("json"):
            continue
        try:
            data = json.loads(value)
        except ValueError:
            continue
        if isinstance(data, dict):
            for name in ("faithfulness", "completeness"):
                points = data.get(name)
                if isinstance(points, list) and all(
                    isinstance(p, (list, tuple)) and len(p) == 2 for p in points
                ):
                    curves[name] = [(float(a), float(b)) for a, b in points]
    return {k: sorted(v) for k, v in curves.items()}
