"""A stored circuit's rows (`CircuitNodeRow`, `CircuitEdgeRow`, `CircuitCurveRow`) laid out as a
drawable graph: columns by layer, then attention < MLP < residual stream within a layer; nodes
within a column by |effect|. Also the checked edges (attributed against measured), the node
table and the curves with their 0-node and every-node points set apart."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from saelab.app.tokens import short_text
from saelab.resultstore import CircuitCurveRow, CircuitEdgeRow, CircuitNodeRow

Explanations = dict[tuple[str, int], str]
"""(sae_id, feature) -> a stored explanation of that latent."""

LABEL_EXPLANATION_CHARS = 24
"""How much of a latent's explanation a node label shows."""

SUBMODULE_ORDER = {
    "z": 0, "attn_out": 1, "mlp_out": 2, "resid_pre": 3, "resid_mid": 3, "resid_post": 4
}  # fmt: skip
"""Where a hook's submodule stands within its layer (`z`: an attention SAE's heads, before W_O)."""


@dataclass
class Node:
    row: CircuitNodeRow
    label: str
    """The full label (`node_label`): hover text, pickers, tables."""
    tag: str = ""
    """The label drawn beside the node (`node_tag`): its column names the layer and hook."""
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


def node_label(row: CircuitNodeRow, explanations: Explanations | None = None) -> str:
    """ "L6 resid #1011 @2 · 'plural nouns…'": layer, submodule, latent (ε: the SAE's error
    node), token position (none: summed over positions) and the latent's explanation shortened
    where one is stored. Not escaped."""
    text = f"L{row.layer} {short(row.submodule)} " + ("ε" if row.is_error else f"#{row.feature}")
    text += f" @{row.pos}" if row.pos >= 0 else ""
    explanation = None if row.is_error else (explanations or {}).get((row.sae_id, row.feature))
    if explanation:
        text += f" · '{short_text(explanation, LABEL_EXPLANATION_CHARS)}'"
    return text


def node_tag(row: CircuitNodeRow, explanations: Explanations | None = None) -> str:
    """ "#1011 @2 · 'plural nouns…'": `node_label` without the layer and submodule, which the
    graph's column already names. Not escaped."""
    text = "ε" if row.is_error else f"#{row.feature}"
    text += f" @{row.pos}" if row.pos >= 0 else ""
    explanation = None if row.is_error else (explanations or {}).get((row.sae_id, row.feature))
    if explanation:
        text += f" · '{short_text(explanation, LABEL_EXPLANATION_CHARS)}'"
    return text


def explained_latents(nodes: list[CircuitNodeRow]) -> dict[str, list[int]]:
    """The latents (not error nodes) of the kept and re-scored nodes, by SAE: what to look up
    explanations for."""
    out: dict[str, set[int]] = {}
    for r in nodes:
        if not r.is_error and (r.kept or r.attributed is not None):
            out.setdefault(r.sae_id, set()).add(int(r.feature))
    return {k: sorted(v) for k, v in out.items()}


def build_graph(
    nodes: list[CircuitNodeRow],
    edges: list[CircuitEdgeRow],
    explanations: Explanations | None = None,
) -> Graph:
    """The kept nodes placed in columns, and the edges between them."""
    kept = [
        Node(r, node_label(r, explanations), node_tag(r, explanations)) for r in nodes if r.kept
    ]
    by_id = {n.row.node: n for n in kept}
    graph = Graph(kept)
    for e in edges:
        up, down = by_id.get(e.up_node), by_id.get(e.down_node)
        if up is not None and down is not None:
            graph.edges.append((up, down, e.effect))
    graph.columns = sorted(
        {(n.row.layer, n.row.submodule) for n in kept},
        key=lambda c: (c[0], SUBMODULE_ORDER.get(c[1], 5), c[1]),
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


@dataclass
class Curve:
    """One kind of curve (faithfulness or completeness) against circuit size."""

    kind: str
    points: list[tuple[int, float]]
    """(nodes kept, value), smallest first, the every-node point excluded."""
    everything: tuple[int, float] | None = None
    """(the graph's size, value) with every node of the graph kept; None when not recorded."""

    def at(self, n_nodes: int) -> float | None:
        return next((v for n, v in self.points if n == n_nodes), None)


def curves_from(rows: list[CircuitCurveRow]) -> dict[str, Curve]:
    """Faithfulness and completeness against circuit size, by kind, faithfulness first (rows
    without a value are left out; `everything` NULL, as in older files, is an ordinary point)."""
    curves: dict[str, Curve] = {}
    for r in rows:
        if r.value is None:
            continue
        curve = curves.setdefault(r.kind, Curve(r.kind, []))
        point = (int(r.n_nodes), float(r.value))
        if r.everything:
            curve.everything = point
        else:
            curve.points.append(point)
    for curve in curves.values():
        curve.points.sort()
    return dict(sorted(curves.items(), key=lambda kv: (kv[0] != "faithfulness", kv[0])))


def zero_position(curves: dict[str, Curve]) -> float:
    """Where the 0-node point is drawn on a log axis (which has no 0): a third of the smallest
    positive size."""
    sizes = [n for c in curves.values() for n, _ in c.points if n > 0]
    sizes += [c.everything[0] for c in curves.values() if c.everything and c.everything[0] > 0]
    return min(sizes, default=1) / 3


def log_ticks(zero_at: float, largest: int) -> tuple[list[float], list[str]]:
    """Tick positions and labels of a log node axis: "0" at the 0 point's stand-in, then
    decades up to past `largest`."""
    decades = [10**k for k in range(math.ceil(math.log10(max(largest, 1))) + 1)]
    return [zero_at, *decades], ["0", *(f"{d:,}" for d in decades)]


@dataclass
class CheckedEdge:
    """An edge whose direct effect was measured by patching, beside its attributed one."""

    label: str
    attributed: float
    measured: float
    switched: float | None
    """Latents per prompt that TopK re-selection would turn on downstream (None: not recorded)."""


def checked_edges(nodes: list[CircuitNodeRow], edges: list[CircuitEdgeRow]) -> list[CheckedEdge]:
    """The edges with a measured effect, named "up → down" by their nodes' labels."""
    labels = {r.node: node_label(r) for r in nodes}

    def name(node: int) -> str:
        return labels.get(node, f"node {node}")

    return [
        CheckedEdge(f"{name(e.up_node)} → {name(e.down_node)}", e.effect, e.measured, e.switched)
        for e in edges
        if e.measured is not None
    ]


def feature_url(sae_id: str, feature: int) -> str:
    """The Feature page of a latent, relative to the app's root (a link from another page)."""
    return f"./feature?sae={sae_id}&feature={int(feature)}"


def node_table(nodes: list[CircuitNodeRow], explanations: Explanations | None = None) -> list[dict]:
    """The kept and the exactly re-scored nodes, largest |effect| first: `effect` is the exact
    effect where `attributed` (the ranking method's) is recorded; `feature page` links a
    latent's Feature page (None for an error node)."""
    shown = [r for r in nodes if r.kept or r.attributed is not None]
    rows = [
        {
            "node": r.node,
            "label": node_label(r, explanations),
            "feature page": None if r.is_error else feature_url(r.sae_id, r.feature),
            "kept": bool(r.kept),
            "effect": r.effect,
            "attributed": r.attributed,
            "activation": r.activation,
            "sae_id": r.sae_id,
        }
        for r in sorted(shown, key=lambda r: -abs(r.effect))
    ]
    if not any(r["attributed"] is not None for r in rows):
        for r in rows:
            del r["attributed"]
    return rows
