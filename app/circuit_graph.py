"""A stored circuit's rows (`CircuitNodeRow`, `CircuitEdgeRow`, `CircuitCurveRow`) laid out as a
drawable graph: columns by layer, then attention < MLP < residual stream within a layer; nodes
within a column by |effect|."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from saelab.resultstore import CircuitCurveRow, CircuitEdgeRow, CircuitNodeRow

SUBMODULE_ORDER = {"attn_out": 0, "mlp_out": 1, "resid_pre": 2, "resid_mid": 2, "resid_post": 3}
"""Where a hook's submodule stands within its layer."""


@dataclass
class Node:
    row: CircuitNodeRow
    label: str
    x: float = 0.0
    y: float = 0.0

    @property
    def feature(self) -> int | None:
        """The latent, or None for an SAE error node."""
        return None if self.row.is_error else self.row.feature

    @property
    def effect(self) -> float:
        return self.row.effect


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[tuple[Node, Node, float]] = field(default_factory=list)
    columns: list[tuple[int, str]] = field(default_factory=list)
    """(layer, submodule) of each column, left to right."""


def short(submodule: str) -> str:
    """resid_post -> resid, attn_out -> attn, mlp_out -> mlp."""
    return submodule.split("_")[0]


def node_label(row: CircuitNodeRow) -> str:
    text = f"L{row.layer} {short(row.submodule)} " + ("ε" if row.is_error else f"#{row.feature}")
    return text + (f" @{row.pos}" if row.pos >= 0 else "")


def build_graph(nodes: list[CircuitNodeRow], edges: list[CircuitEdgeRow]) -> Graph:
    """The kept nodes placed in columns, and the edges between them."""
    kept = [Node(r, node_label(r)) for r in nodes if r.kept]
    by_id = {n.row.node: n for n in kept}
    graph = Graph(kept)
    for e in edges:
        up, down = by_id.get(e.up_node), by_id.get(e.down_node)
        if up is not None and down is not None:
            graph.edges.append((up, down, e.effect))
    graph.columns = sorted(
        {(n.row.layer, n.row.submodule) for n in kept},
        key=lambda c: (c[0], SUBMODULE_ORDER.get(c[1], 4), c[1]),
    )
    for x, col in enumerate(graph.columns):
        members = sorted(
            (n for n in kept if (n.row.layer, n.row.submodule) == col), key=lambda n: -abs(n.effect)
        )
        for y, n in enumerate(members):
            n.x, n.y = float(x), float(-y)
    return graph


def node_size(effect: float, largest: float) -> float:
    return 8.0 + 26.0 * math.sqrt(abs(effect) / largest) if largest > 0 else 10.0


def curves_from(rows: list[CircuitCurveRow]) -> dict[str, list[tuple[float, float]]]:
    """Faithfulness and completeness against circuit size, by kind."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.value is not None:
            curves.setdefault(r.kind, []).append((float(r.n_nodes), float(r.value)))
    return {k: sorted(v) for k, v in curves.items()}
