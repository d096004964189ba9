"""A stored attribution graph's rows (`GraphRunRow`, `GraphNodeRow`, `GraphEdgeRow`) as a
drawing: layers as rows (token embeddings at the bottom, output logits on top), prompt tokens
as columns, nodes sized by their influence on the targets, edges coloured by sign and drawn
wider the larger |weight|. `prune` thins the stored graph for display (the page's sliders);
`write_graph_html` writes the same figure with the prompt, targets, scores and a node table as
one standalone HTML file.

Everything shown comes from a corpus (tokens) or an LLM (explanations): plotly reads `<b>`,
`<br>` and friends in text and hover text as markup, so every such string is escaped here, and
the HTML export escapes every value it writes.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from saelab.app.tokens import short_text
from saelab.resultstore import GraphEdgeRow, GraphNodeRow, GraphRunRow

Explanations = dict[tuple[str, int], str]
"""(sae_id, feature) -> a stored explanation of that latent."""

KINDS = ("embedding", "latent", "error", "logit")
"""Node kinds, in the legend's order."""

KIND_STYLE = {
    "embedding": {"symbol": "square", "color": "#8c8c8c", "name": "token embedding"},
    "latent": {"symbol": "circle", "color": "#ff8c1a", "name": "latent"},
    "error": {"symbol": "diamond", "color": "#c7c7c7", "name": "error (unexplained)"},
    "logit": {"symbol": "hexagon", "color": "#9467bd", "name": "output logit"},
}
"""How each kind of node is drawn."""

SIGN_COLORS = {True: "#1f77b4", False: "#d62728"}
"""Edge colour by sign (positive: blue, negative: red), as on the Circuits page."""

EDGE_WIDTHS = (0.6, 1.3, 2.4, 4.0)
"""Line width of the edge buckets, weakest to strongest (|weight| / largest, sqrt-spaced)."""

EDGE_OPACITIES = (0.25, 0.4, 0.55, 0.75)

LABEL_EXPLANATION_CHARS = 32
"""How much of a latent's explanation a node label carries."""

HOVER_EXPLANATION_CHARS = 120
"""How much of it the hover text carries."""

TICK_TOKEN_CHARS = 12
"""How much of a token a column's label shows (hover and the prompt above show it whole)."""

CELL_WIDTH = 0.8
"""How much of a token's column the nodes of one (layer, position) cell spread over."""

LOGIT_STEP = 0.6
"""How far apart the target logits stand on their row (in token columns)."""

CELL_LINE = 8
"""Nodes per line within a cell before a cell wraps onto another line of its row."""


@dataclass
class Node:
    """A node placed on the drawing."""

    row: GraphNodeRow
    label: str
    """One line naming the node (hover text, pickers, tables). Not escaped."""
    explanation: str | None = None
    x: float = 0.0
    y: float = 0.0

    @property
    def id(self) -> str:
        return self.row.node

    @property
    def kind(self) -> str:
        return self.row.kind

    @property
    def is_latent(self) -> bool:
        return self.row.kind == "latent" and self.row.sae_id is not None


@dataclass
class Layout:
    nodes: list[Node]
    edges: list[tuple[Node, Node, float]] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    """The layers drawn as rows, bottom (embeddings, -1) to top (logits)."""
    tokens: list[str] = field(default_factory=list)
    """The prompt's token strings, one per column."""
    n_layers: int | None = None
    """The model's layer count (the logits' layer), when the graph has a logit node."""


# -- names ------------------------------------------------------------------------------------


def token_text(text: str) -> str:
    """A token as a quoted literal (spaces and newlines visible). Not escaped."""
    return repr(text)


def visible_token(text: str) -> str:
    """A token as it reads, newlines and tabs shown as marks (spaces kept: shown in a
    `white-space: pre` box). Not escaped."""
    return text.replace("\r", "␍").replace("\n", "↵").replace("\t", "→")


def short_token(text: str, limit: int = TICK_TOKEN_CHARS) -> str:
    """A token cut to `limit` characters ("…" where cut): a column's tick label."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def token_at(tokens: list[str], pos: int) -> str:
    return tokens[pos] if 0 <= pos < len(tokens) else "?"


def node_label(
    row: GraphNodeRow, tokens: list[str], explanations: Explanations | None = None
) -> str:
    """ "L3 #1234 @5 ' Paris' · 'capital cities…'": a latent's layer, index, position and token
    with its explanation shortened; "error L3 @5 ' Paris'", "emb @5 ' Paris'", "logit ' Paris'
    (p 0.53)" for the other kinds; "attn L3 #12 @5 …", "attn error L3 @5 …" for an attention
    SAE's nodes. Not escaped."""
    token = token_text(token_at(tokens, row.pos))
    attn = "attn " if (row.hook or "").endswith(".attn.hook_z") else ""  # an attention SAE's
    if row.kind == "latent":
        text = f"{attn}L{row.layer} #{row.feature} @{row.pos} {token}"
        explanation = latent_explanation(row, explanations)
        if explanation:
            text += f" · '{short_text(explanation, LABEL_EXPLANATION_CHARS)}'"
        return text
    if row.kind == "error":
        return f"{attn}error L{row.layer} @{row.pos} {token}"
    if row.kind == "embedding":
        return f"emb @{row.pos} {token_text(row.label) if row.label is not None else token}"
    if row.kind == "logit":
        name = token_text(row.label) if row.label is not None else f"<{row.feature}>"
        prob = "" if row.activation is None else f" (p {row.activation:.3g})"
        return f"logit {name}{prob}"
    return row.node


def latent_explanation(row: GraphNodeRow, explanations: Explanations | None) -> str | None:
    if row.kind != "latent" or row.sae_id is None or row.feature is None:
        return None
    return (explanations or {}).get((row.sae_id, int(row.feature)))


def layer_name(layer: int, n_layers: int | None) -> str:
    if layer < 0:
        return "embeddings"
    if n_layers is not None and layer >= n_layers:
        return "logits"
    return f"L{layer}"


def explained_latents(nodes: list[GraphNodeRow]) -> dict[str, list[int]]:
    """The latents of the graph by SAE: what to look up explanations for."""
    out: dict[str, set[int]] = {}
    for r in nodes:
        if r.kind == "latent" and r.sae_id is not None and r.feature is not None:
            out.setdefault(r.sae_id, set()).add(int(r.feature))
    return {k: sorted(v) for k, v in out.items()}


# -- pruning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruning:
    """What the drawing keeps of the stored graph."""

    node_threshold: float = 0.8
    """Keep the most influential latent and error nodes that together carry this fraction of
    their total |influence| (1: every node). Token embeddings and logits, the graph's inputs
    and outputs, pass always."""
    edge_threshold: float = 0.98
    """Of the edges between kept nodes, keep the strongest that together carry this fraction
    of their total |weight| (1: every one)."""
    max_edges: int | None = None
    """Keep at most this many edges, strongest first (None: no limit)."""
    drop_isolated: bool = True
    """Drop a kept node (not a logit) that no kept edge touches."""


def _cumulative_cut(values: list[float], fraction: float) -> int:
    """How many of `values` (sorted, largest first, all >= 0) a prefix needs to reach
    `fraction` of their sum; every one for a fraction of 1 or more."""
    if fraction >= 1.0:
        return len(values)
    total = sum(values)
    if total <= 0:
        return 0
    running = 0.0
    for i, v in enumerate(values):
        running += v
        if running >= fraction * total:
            return i + 1
    return len(values)


def prune(
    nodes: list[GraphNodeRow], edges: list[GraphEdgeRow], pruning: Pruning = Pruning()
) -> tuple[list[GraphNodeRow], list[GraphEdgeRow]]:
    """The nodes and edges the drawing keeps (nodes most influential first, edges strongest
    first)."""
    logits = [n for n in nodes if n.kind == "logit"]
    ends = {n.node for n in nodes if n.kind in ("embedding", "logit")}
    others = sorted(
        (n for n in nodes if n.node not in ends), key=lambda n: (-abs(n.influence), n.node)
    )
    cut = _cumulative_cut([abs(n.influence) for n in others], pruning.node_threshold)
    kept = ends | {n.node for n in others[:cut]}
    between = sorted(
        (e for e in edges if e.source in kept and e.target in kept),
        key=lambda e: (-abs(e.weight), e.source, e.target),
    )
    n_edges = _cumulative_cut([abs(e.weight) for e in between], pruning.edge_threshold)
    if pruning.max_edges is not None:
        n_edges = min(n_edges, pruning.max_edges)
    kept_edges = between[:n_edges]
    if pruning.drop_isolated:
        touched = {e.source for e in kept_edges} | {e.target for e in kept_edges}
        kept = {n.node for n in logits} | (kept & touched)
    kept_nodes = sorted(
        (n for n in nodes if n.node in kept), key=lambda n: (-abs(n.influence), n.node)
    )
    return kept_nodes, kept_edges


# -- layout -----------------------------------------------------------------------------------


def layout(
    run: GraphRunRow,
    nodes: list[GraphNodeRow],
    edges: list[GraphEdgeRow],
    explanations: Explanations | None = None,
) -> Layout:
    """Nodes placed on the grid: row = the node's layer among the layers present, column = its
    token position; the nodes of one cell spread across the column (latents, most influential
    first, then errors), wrapping onto more lines when many."""
    tokens = list(run.token_strs)
    placed = [
        Node(r, node_label(r, tokens, explanations), latent_explanation(r, explanations))
        for r in nodes
    ]
    logit_layers = {n.row.layer for n in placed if n.kind == "logit"}
    out = Layout(placed, layers=sorted({n.row.layer for n in placed}), tokens=tokens)
    out.n_layers = min(logit_layers) if logit_layers else None
    row_of = {layer: i for i, layer in enumerate(out.layers)}
    cells: dict[tuple[int, int], list[Node]] = {}
    for n in placed:
        cells.setdefault((n.row.layer, n.row.pos), []).append(n)
    order = {k: i for i, k in enumerate(KINDS)}
    for (layer, pos), members in cells.items():
        members.sort(key=lambda n: (order.get(n.kind, 9), -abs(n.row.influence), n.id))
        lines = min(3, math.ceil(len(members) / CELL_LINE))
        per_line = math.ceil(len(members) / lines)
        step = min(0.2, CELL_WIDTH / max(per_line - 1, 1))
        for i, n in enumerate(members):
            line, j = divmod(i, per_line)
            in_line = min(per_line, len(members) - line * per_line)
            n.x = pos + (j - (in_line - 1) / 2) * step
            n.y = row_of[layer] + (line - (lines - 1) / 2) * 0.28
    _spread_logits([n for n in placed if n.kind == "logit"])
    by_id = {n.id: n for n in placed}
    for e in edges:
        source, target = by_id.get(e.source), by_id.get(e.target)
        if source is not None and target is not None:
            out.edges.append((source, target, float(e.weight)))
    return out


def _spread_logits(logits: list[Node]) -> None:
    """The logits' row holds nothing else: the most probable target at its position, the
    others to its left, far enough apart for their token labels."""
    logits.sort(key=lambda n: (-(n.row.activation or 0.0), n.id))
    for i, n in enumerate(logits):
        n.x = n.row.pos - LOGIT_STEP * i


def node_size(influence: float, largest: float) -> float:
    return 7.0 + 23.0 * math.sqrt(abs(influence) / largest) if largest > 0 else 10.0


def edge_bucket(weight: float, largest: float) -> int:
    """Which of the `EDGE_WIDTHS` an edge is drawn with: sqrt(|weight| / largest) in equal
    steps."""
    if largest <= 0:
        return 0
    share = math.sqrt(min(abs(weight) / largest, 1.0))
    return min(len(EDGE_WIDTHS) - 1, int(share * len(EDGE_WIDTHS)))


def hover_text(node: Node) -> str:
    """The node's hover text: escaped lines joined by <br>."""
    r = node.row
    lines = [node.label.split(" · ")[0] if node.explanation else node.label]
    if node.explanation:
        lines.append(short_text(node.explanation, HOVER_EXPLANATION_CHARS))
    lines.append(f"influence {r.influence:.3g}")
    if r.activation is not None:
        what = {"latent": "activation", "error": "error norm", "logit": "probability"}
        lines.append(f"{what.get(r.kind, 'value')} {r.activation:.3g}")
    if r.kind == "latent" and r.sae_id:
        lines.append(f"SAE {r.sae_id} · {r.hook or ''}")
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def figure(graph: Layout, title: str | None = None):
    """The plotly figure: one line trace per (sign, width bucket) with None separators (a few
    traces for thousands of edges), one marker trace per node kind. Each marker's customdata is
    [node id, SAE id or "", latent or -1]."""
    import plotly.graph_objects as go

    fig = go.Figure()
    strongest = max((abs(w) for *_, w in graph.edges), default=0.0)
    buckets: dict[tuple[bool, int], tuple[list, list]] = {}
    for source, target, weight in graph.edges:
        xs, ys = buckets.setdefault((weight >= 0, edge_bucket(weight, strongest)), ([], []))
        xs += [source.x, target.x, None]
        ys += [source.y, target.y, None]
    for positive in (True, False):
        shown_legend = False
        for b in range(len(EDGE_WIDTHS)):
            if (positive, b) not in buckets:
                continue
            xs, ys = buckets[(positive, b)]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    hoverinfo="skip",
                    name="positive edges" if positive else "negative edges",
                    legendgroup="pos" if positive else "neg",
                    showlegend=not shown_legend,
                    line={"color": SIGN_COLORS[positive], "width": EDGE_WIDTHS[b]},
                    opacity=EDGE_OPACITIES[b],
                )
            )
            shown_legend = True
    largest = max((abs(n.row.influence) for n in graph.nodes), default=0.0)
    for kind in KINDS:
        members = [n for n in graph.nodes if n.kind == kind]
        if not members:
            continue
        style = KIND_STYLE[kind]
        fig.add_trace(
            go.Scatter(
                x=[n.x for n in members],
                y=[n.y for n in members],
                mode="markers+text" if kind == "logit" else "markers",
                name=style["name"],
                text=[_logit_tag(n) for n in members] if kind == "logit" else None,
                textposition="top center",
                hovertext=[hover_text(n) for n in members],
                hovertemplate="%{hovertext}<extra></extra>",
                customdata=[
                    [n.id, n.row.sae_id or "", -1 if n.row.feature is None else int(n.row.feature)]
                    for n in members
                ],
                marker={
                    "symbol": style["symbol"],
                    "color": style["color"],
                    "size": [_marker_size(n, largest) for n in members],
                    "line": {"width": 1, "color": "#333"},
                },
            )
        )
    n_cols = max(len(graph.tokens), 1)
    left = min([-0.6, *(n.x - 0.4 for n in graph.nodes)])
    fig.update_xaxes(
        range=[left, n_cols - 0.4],
        tickvals=list(range(len(graph.tokens))),
        ticktext=[
            html.escape(f"{i} {token_text(short_token(t))}", quote=False)
            for i, t in enumerate(graph.tokens)
        ],
        tickangle=-35 if n_cols > 12 else 0,
        showgrid=True,
        gridcolor="#eee",
        zeroline=False,
    )
    fig.update_yaxes(
        range=[-0.6, max(len(graph.layers), 1) - (0.1 if graph.n_layers is not None else 0.4)],
        tickvals=list(range(len(graph.layers))),
        ticktext=[layer_name(layer, graph.n_layers) for layer in graph.layers],
        showgrid=True,
        gridcolor="#eee",
        zeroline=False,
    )
    fig.update_layout(
        title=title
        or "Attribution graph (rows: layers, columns: tokens; size: influence; "
        "edges blue +, red −)",
        height=max(440, 170 + (62 if len(graph.layers) <= 12 else 44) * len(graph.layers)),
        legend={"orientation": "h", "y": -0.12 if n_cols <= 12 else -0.22},
        margin={"t": 60, "l": 80},
        plot_bgcolor="white",
        clickmode="event+select",
        hovermode="closest",
        dragmode="pan",
    )
    return fig


def _marker_size(node: Node, largest: float) -> float:
    """Influence sets a node's size; a target logit's is set by its probability."""
    if node.kind == "logit":
        return 12.0 + 18.0 * math.sqrt(min(max(node.row.activation or 0.0, 0.0), 1.0))
    return node_size(node.row.influence, largest)


def _logit_tag(node: Node) -> str:
    r = node.row
    name = token_text(r.label) if r.label is not None else f"<{r.feature}>"
    return html.escape(name, quote=False)


# -- tables -----------------------------------------------------------------------------------


def feature_url(sae_id: str, feature: int) -> str:
    """The Feature page of a latent, relative to the app's root."""
    return f"./feature?sae={sae_id}&feature={int(feature)}"


def node_table(graph: Layout) -> list[dict]:
    """The drawn nodes, most influential first; `feature page` links a latent's Feature page."""
    rows = []
    for n in sorted(graph.nodes, key=lambda n: -abs(n.row.influence)):
        r = n.row
        rows.append(
            {
                "node": r.node,
                "kind": r.kind,
                "label": n.label,
                "layer": layer_name(r.layer, graph.n_layers),
                "pos": r.pos,
                "token": token_at(graph.tokens, r.pos),
                "influence": r.influence,
                "activation": r.activation,
                "explanation": n.explanation,
                "feature page": feature_url(r.sae_id, r.feature) if n.is_latent else None,
            }
        )
    return rows


def node_edges(graph: Layout, node_id: str, limit: int = 10) -> dict[str, list[dict]]:
    """A node's strongest incoming and outgoing drawn edges."""
    incoming = [(s, w) for s, t, w in graph.edges if t.id == node_id]
    outgoing = [(t, w) for s, t, w in graph.edges if s.id == node_id]

    def rows(pairs: list[tuple[Node, float]]) -> list[dict]:
        pairs = sorted(pairs, key=lambda p: -abs(p[1]))[:limit]
        return [{"node": n.label, "weight": w} for n, w in pairs]

    return {"from": rows(incoming), "to": rows(outgoing)}


def run_label(run: GraphRunRow) -> str:
    """A graph's name in pickers: created, prompt (shortened), targets, size. Not escaped."""
    when = run.created_at.strftime("%Y-%m-%d %H:%M") if run.created_at else "?"
    targets = ", ".join(token_text(t) for t in run.target_strs)
    prompt = short_text(run.prompt, 40)
    return f"{when} · {prompt!r} → {targets} · {run.dictionary} · {run.n_nodes} nodes"


# -- HTML export ------------------------------------------------------------------------------


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
.tok { display: inline-block; border: 1px solid #ccc; border-radius: 4px; padding: 1px 5px;
       margin: 2px; font-family: monospace; white-space: pre; }
.tok small { color: #999; margin-right: 4px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f8f8f8; padding: 8px; overflow-x: auto; }
"""


def _e(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def tokens_html(tokens: list[str]) -> str:
    """The prompt's tokens as boxes with their positions (escaped)."""
    return "".join(
        f'<span class="tok"><small>{i}</small>{html.escape(visible_token(t))}</span>'
        for i, t in enumerate(tokens)
    )


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(r[c])}</td>'
            if isinstance(r[c], (int, float)) and not isinstance(r[c], bool)
            else f"<td>{_e(r[c])}</td>"
            for c in columns
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def scores_rows(run: GraphRunRow) -> list[dict]:
    return [
        {"graph": f"unpruned ({run.n_nodes_total} nodes)", "replacement score":
         run.replacement_score, "completeness score": run.completeness_score},
        {"graph": f"pruned ({run.n_nodes} nodes, {run.n_edges} edges)", "replacement score":
         run.replacement_score_pruned, "completeness score": run.completeness_score_pruned},
    ]  # fmt: skip


def graph_html(
    run: GraphRunRow,
    nodes: list[GraphNodeRow],
    edges: list[GraphEdgeRow],
    explanations: Explanations | None = None,
    pruning: Pruning = Pruning(1.0, 1.0, drop_isolated=False),
) -> str:
    """One standalone HTML page (plotly.js inline: it opens offline) of the graph: prompt,
    targets, scores, the figure, the node table and the provenance."""
    kept_nodes, kept_edges = prune(nodes, edges, pruning)
    graph = layout(run, kept_nodes, kept_edges, explanations)
    fig = figure(graph)
    targets = [
        {"target": token_text(s), "token id": t, "probability": p}
        for t, s, p in zip(run.targets, run.target_strs, run.target_probs)
    ]
    table = [
        {k: r[k] for k in ("node", "kind", "layer", "pos", "token", "influence", "activation")}
        | {"explanation": r["explanation"]}
        for r in node_table(graph)
    ]
    provenance = [
        {"field": k, "value": getattr(run, k)}
        for k in ("graph_id", "model", "model_sha256", "dictionary", "node_budget",
                  "edge_budget", "n_nodes_total", "n_nodes", "n_edges", "seconds",
                  "saelab_version", "created_at")
    ] + [
        {"field": f"dictionary {i}", "value": f"{sae} · {hook}"}
        for i, (sae, hook) in enumerate(zip(run.sae_ids, run.hooks))
    ]  # fmt: skip
    plot = fig.to_html(full_html=False, include_plotlyjs=True, config={"responsive": True})
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Attribution graph · {html.escape(short_text(run.prompt, 60))}</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Attribution graph</h1>"
        f"<h3>Prompt</h3><div>{tokens_html(run.token_strs)}</div>"
        f"<h3>Targets</h3>{_table(targets, ['target', 'token id', 'probability'])}"
        "<h3>Scores</h3>"
        f"{_table(scores_rows(run), ['graph', 'replacement score', 'completeness score'])}"
        "<p>Replacement score: the fraction of the targets' attribution that reaches them from "
        "token embeddings rather than error nodes (1: the replacement model explains it all). "
        "Completeness: the fraction of every node's input that comes from nodes rather than "
        "errors, weighted by influence.</p>"
        f"<h3>Graph ({len(graph.nodes)} nodes, {len(graph.edges)} edges)</h3>{plot}"
        f"<h3>Nodes</h3>{_table(table, list(table[0]) if table else ['node'])}"
        f"<h3>Provenance</h3>{_table(provenance, ['field', 'value'])}"
        f"<h3>Config</h3><pre>{html.escape(run.config_json or '')}</pre>"
        "</body></html>\n"
    )


def write_graph_html(store, graph_id: str, path: str | Path) -> Path:
    """Write the stored graph `graph_id` of the results store as a standalone HTML file."""
    from saelab import resultstore as results
    from saelab.base.errors import UserError

    runs = [r for r in results.graph_runs(store) if r.graph_id == graph_id]
    if not runs:
        known = ", ".join(r.graph_id for r in results.graph_runs(store)[:5]) or "none"
        raise UserError(
            f"no graph {graph_id!r} in {store.path}; stored graphs (newest first): {known}"
        )
    nodes = results.graph_nodes(store, graph_id)
    edges = results.graph_edges(store, graph_id)
    explanations: Explanations = {}
    for sae_id, features in explained_latents(nodes).items():
        texts = results.explanation_texts(store, sae_id, features)
        explanations.update({(sae_id, f): t for f, t in texts.items() if t})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(graph_html(runs[0], nodes, edges, explanations), encoding="utf-8")
    return out
