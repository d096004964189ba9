"""Circuits: the circuits in the file, with their headline numbers (faithfulness of the kept
circuit and of every node, completeness, edge correlation) and settings, drawn as a graph
(layers and submodules as columns, node size by effect, edges by sign; a node opens its
feature), the node table (exact beside attributed effects for re-scored nodes), the edge check
(attributed against measured direct effects) and the faithfulness and completeness curves on a
log node axis. A friendly empty state until the file holds circuits; older files without the
newer columns say "not recorded"."""

from __future__ import annotations

import html

import streamlit as st

from saelab.app import circuit_graph, common, shift_section
from saelab.resultstore import CircuitNodeRow, CircuitRow

TITLE = "Circuits"
ICON = ":material/account_tree:"

EMPTY = (
    "No circuits in this results file yet. Find one with `saelab circuit --sae DIR --task sva "
    "--db FILE` (the demo ends with one); it will show here."
)


NOT_RECORDED = "not recorded"
"""Shown for a value an older results file lacks (NULL)."""

_FIELDS = (
    "task", "n_prompts", "method", "edge_method", "selection", "exact_nodes", "baseline",
    "clean_accuracy", "m_clean", "m_patch", "m_empty", "n_nodes", "n_edges", "faithfulness",
    "faithfulness_all", "completeness", "edge_correlation", "node_threshold", "edge_threshold",
    "ablation", "error_policy", "per_position", "model", "seconds", "created_at", "circuit_id",
)  # fmt: skip

_SETTINGS = (
    ("selection", "selection"), ("node method", "method"), ("edge method", "edge_method"),
    ("ablation", "ablation"), ("error nodes", "error_policy"), ("baseline", "baseline"),
    ("exact re-scoring (top nodes)", "exact_nodes"),
)  # fmt: skip

COLORS = {"faithfulness": "#1f77b4", "completeness": "#ff7f0e"}

LEGEND = (
    "How to read a node: **L6 resid #1011 @2 · 'explanation…'** is latent 1011 of the SAE on "
    "layer 6's residual stream, at token position 2 of the task's prompts (0 is the BOS token; "
    "the prompts share one length; no @ means summed over positions), with the start of its "
    "stored explanation. **ε** (a square) is that SAE's error node: the part of the activation "
    "the SAE does not reconstruct, kept as a node of its own. Colour (scale on the right): the "
    "node's effect, the change of the task metric (logit of the right answer minus the wrong "
    "one) when the node alone is moved to its patch value; red (negative) nodes support the "
    "right answer, blue ones work against it. Size: |effect|. Click a latent's node, or "
    "use the node table's links, to open its Feature page."
)


def render() -> None:
    st.title("Circuits")
    circuits = common.q("list_circuits")
    if not circuits:
        st.info(EMPTY)
        shift_section.render()
        return
    labels = {c.circuit_id: _label(c) for c in circuits}
    ids = list(labels)
    wanted = st.query_params.get("circuit")
    index = ids.index(wanted) if wanted in ids else 0
    if wanted and wanted not in ids:
        common.bad_param("circuit", wanted, "names no circuit of this results file", labels[ids[0]])
    choice = st.selectbox("Circuit", ids, index=index, format_func=labels.get, key="circuit_pick")
    st.query_params["circuit"] = choice
    circuit = next(c for c in circuits if c.circuit_id == choice)
    nodes = common.q("circuit_nodes", choice)
    edges = common.q("circuit_edges", choice)
    curves = circuit_graph.curves_from(common.q("circuit_curves", choice))
    checks = circuit_graph.checked_edges(nodes, edges)
    _headline(circuit, curves, len(checks))
    _settings(circuit)
    with st.expander("Every recorded field"):
        st.dataframe(
            [{"field": k, "value": common.fmt(getattr(circuit, k))} for k in _FIELDS],
            hide_index=True,
            key="circuit_fields",
        )
    explanations = _explanations(nodes)
    graph = circuit_graph.build_graph(nodes, edges, explanations)
    if not graph.nodes:
        st.info("This circuit kept no nodes.")
    else:
        _draw(graph)
        st.caption(LEGEND)
    _node_table(circuit, nodes, explanations)
    _edge_check(circuit, checks)
    _curves(circuit, curves)
    shift_section.render()


def _explanations(nodes: list[CircuitNodeRow]) -> circuit_graph.Explanations:
    """Stored explanations of the circuit's shown latents, by (SAE, latent)."""
    out: circuit_graph.Explanations = {}
    for sae_id, features in circuit_graph.explained_latents(nodes).items():
        texts = common.q("explanation_texts", sae_id, features)
        out.update({(sae_id, f): t for f, t in texts.items() if t})
    return out


def _label(c: CircuitRow) -> str:
    return f"{c.circuit_id[:12]} · {c.task} · {c.method} · {c.n_nodes} nodes"


def _num(value: float | None) -> str:
    return NOT_RECORDED if value is None else f"{value:.3g}"


def _score(value: float | None) -> str:
    """A faithfulness, completeness or correlation: three decimals, so 0.9996 is not "1"."""
    return NOT_RECORDED if value is None else f"{value:.3f}"


def _headline(circuit: CircuitRow, curves: dict[str, circuit_graph.Curve], n_checked: int) -> None:
    every = curves.get("faithfulness")
    size = f" ({every.everything[0]:,})" if every and every.everything else ""
    cols = st.columns(4)
    cols[0].metric(
        f"faithfulness ({circuit.n_nodes} nodes kept)",
        _score(circuit.faithfulness),
        help="The metric with only the kept circuit, from m(empty) = 0 to the model's = 1.",
    )
    cols[1].metric(
        "completeness",
        _score(circuit.completeness),
        help="The metric with the kept circuit ablated and the rest kept (0: nothing is left "
        "outside the circuit).",
    )
    cols[2].metric(
        f"faithfulness, every node{size}",
        _score(circuit.faithfulness_all),
        help="Every node of the graph kept: about 1 when the SAE splice agrees with the model.",
    )
    cols[3].metric(
        f"edge correlation ({n_checked} checked)",
        _score(circuit.edge_correlation),
        help="Pearson correlation of attributed and measured direct effects of checked edges.",
    )


def _settings(circuit: CircuitRow) -> None:
    parts = [f"{name} <b>{_text(getattr(circuit, field))}</b>" for name, field in _SETTINGS]
    st.html(f'<div style="color:#555">{" · ".join(parts)}</div>')


def _text(value: object) -> str:
    """A stored value as escaped HTML text."""
    return html.escape(NOT_RECORDED if value is None else common.fmt(value))


def _draw(graph: circuit_graph.Graph) -> None:
    import plotly.graph_objects as go

    largest = max(abs(n.effect) for n in graph.nodes) or 1.0
    strongest = max((abs(e) for *_, e in graph.edges), default=1.0) or 1.0
    tallest = max(sum(n.x == x for n in graph.nodes) for x in {n.x for n in graph.nodes})
    fig = go.Figure()
    for up, down, effect in graph.edges:
        fig.add_trace(
            go.Scatter(
                x=[up.x, down.x],
                y=[up.y, down.y],
                mode="lines",
                hoverinfo="skip",
                showlegend=False,
                line={
                    "color": "#1f77b4" if effect >= 0 else "#d62728",
                    "width": 0.5 + 4 * abs(effect) / strongest,
                },
                opacity=0.6,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[n.x for n in graph.nodes],
            y=[n.y for n in graph.nodes],
            mode="markers+text",
            # plotly reads tags, not attributes: escaping <, > and & keeps the text text, and
            # quotes stay as they are (plotly would show "&quot;" literally)
            text=[html.escape(n.tag, quote=False) for n in graph.nodes],
            hovertext=[html.escape(n.label, quote=False) for n in graph.nodes],
            textposition="middle right",  # beside: stacked labels never overlap
            customdata=[
                [n.feature if n.feature is not None else -1, n.row.sae_id] for n in graph.nodes
            ],
            hovertemplate="%{hovertext}<br>effect %{marker.color:.3g}<extra></extra>",
            marker={
                "size": [circuit_graph.node_size(n.effect, largest) for n in graph.nodes],
                "color": [n.effect for n in graph.nodes],
                "colorscale": "RdBu",
                "cmid": 0,
                "colorbar": {"title": {"text": "effect"}, "thickness": 14, "len": 0.8},
                "symbol": ["circle" if n.feature is not None else "square" for n in graph.nodes],
                "line": {"width": 1, "color": "#333"},
            },
            showlegend=False,
        )
    )
    fig.update_xaxes(
        range=[-0.3, len(graph.columns) - 1 + _label_room(graph)],
        tickvals=list(range(len(graph.columns))),
        ticktext=[
            html.escape(f"L{layer} {circuit_graph.short(sub)}") for layer, sub in graph.columns
        ],
    )
    fig.update_yaxes(visible=False)
    fig.update_layout(
        height=max(420, 160 + 50 * tallest),
        title="Nodes (size: |effect|, square: SAE error) and edges (blue +, red −)",
    )
    event = st.plotly_chart(fig, key="circuit_graph", on_select="rerun", selection_mode="points")
    picked = [p for p in (event.selection.points if event else []) if p.get("customdata")]
    features = [n for n in graph.nodes if n.feature is not None]
    if picked and picked[0]["customdata"][0] >= 0:
        feature, sae_id = picked[0]["customdata"]
        common.goto("feature", sae=sae_id, feature=feature)
    if features:
        names = {i: n.label for i, n in enumerate(features)}
        i = st.selectbox(
            "Open a node's feature", list(names), format_func=names.get, key="circuit_node"
        )
        if st.button("Open feature", key="circuit_open"):
            node = features[i]
            common.goto("feature", sae=node.row.sae_id, feature=node.feature)


def _label_room(graph: circuit_graph.Graph, plot_px: float = 900, char_px: float = 6.5) -> float:
    """How far (in column units) the x axis reaches past the last column so that column's
    labels fit: r units give r·plot_px/(span) pixels, span = columns − 0.7 + r."""
    last = max(n.x for n in graph.nodes)
    need = 24 + char_px * max(len(n.tag) for n in graph.nodes if n.x == last)
    return max(0.6, need * (len(graph.columns) - 0.7) / max(plot_px - need, 1.0))


def _node_table(
    circuit: CircuitRow, nodes: list[CircuitNodeRow], explanations: circuit_graph.Explanations
) -> None:
    rows = circuit_graph.node_table(nodes, explanations)
    if not rows:
        return
    st.subheader("Node table")
    rescored = sum(r.get("attributed") is not None for r in rows)
    if rescored:
        st.caption(
            f"{rescored} nodes re-scored by exact patching: their effect is the exact effect, "
            "attributed the ranking method's estimate. Kept nodes and re-scored ones shown."
        )
    elif circuit.exact_nodes is None:
        st.caption(f"Exact re-scoring of nodes: {NOT_RECORDED} (an older results file).")
    else:
        st.caption("No node was re-scored by exact patching: effects are attributed.")
    st.dataframe(
        rows,
        hide_index=True,
        key="circuit_nodes",
        column_config={
            "label": st.column_config.TextColumn(width="large"),
            "feature page": st.column_config.LinkColumn(
                help="Open the latent's Feature page", display_text="open"
            ),
        },
    )


def _edge_check(circuit: CircuitRow, checks: list[circuit_graph.CheckedEdge]) -> None:
    st.subheader("Edge check")
    if not checks:
        st.caption("No edge's direct effect was measured by patching for this circuit.")
        return
    st.markdown(
        f"Correlation of attributed and measured direct effects over the **{len(checks)} "
        f"checked edges**: **{_score(circuit.edge_correlation)}**."
    )
    st.caption(
        "Measured: the edge's direct path patched alone. Switched: latents per prompt that TopK "
        f"re-selection would turn on at the downstream node ({_switched_text(checks)})."
    )
    st.plotly_chart(_edge_figure(checks), key="circuit_edge_check")


def _switched_text(checks: list[circuit_graph.CheckedEdge]) -> str:
    values = [c.switched for c in checks if c.switched is not None]
    if not values:
        return NOT_RECORDED
    return f"mean {sum(values) / len(values):.3g}, largest {max(values):.3g}"


def _edge_figure(checks: list[circuit_graph.CheckedEdge]):
    import plotly.graph_objects as go

    xs, ys = [c.attributed for c in checks], [c.measured for c in checks]
    lo, hi = min(xs + ys), max(xs + ys)
    recorded = all(c.switched is not None for c in checks)
    marker: dict = {"size": 9, "line": {"width": 1, "color": "#333"}}
    if recorded:
        marker |= {
            "color": [c.switched for c in checks],
            "colorscale": "Viridis",
            "colorbar": {"title": {"text": "switched"}},
        }
    fig = go.Figure(
        [
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                name="y = x",
                line={"dash": "dash", "color": "#888"},
                hoverinfo="skip",
            ),
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="checked edges",
                marker=marker,
                text=[html.escape(c.label) for c in checks],
                customdata=[_num(c.switched) for c in checks],
                hovertemplate="%{text}<br>attributed %{x:.3g}<br>measured %{y:.3g}"
                "<br>switched on by re-selection %{customdata}<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        title="Direct effects of the checked edges: attributed against measured"
        + (" (colour: switched)" if recorded else ""),
        xaxis_title="attributed",
        yaxis_title="measured",
        legend={"orientation": "h", "y": -0.2},
        height=440,
    )
    return fig


def _curves(circuit: CircuitRow, curves: dict[str, circuit_graph.Curve]) -> None:
    st.subheader("Faithfulness and completeness")
    if not curves:
        st.caption("No faithfulness or completeness curves stored for this circuit.")
        return
    st.html(_zero_text(circuit, curves))
    if not any(c.everything for c in curves.values()):
        st.caption(f"The every-node point: {NOT_RECORDED} (an older results file).")
    st.plotly_chart(_curve_figure(circuit, curves), key="circuit_curves")


def _zero_text(circuit: CircuitRow, curves: dict[str, circuit_graph.Curve]) -> str:
    """The 0-node point in words (HTML, escaped): a log axis has no 0."""
    values = {k: c.at(0) for k, c in curves.items()}
    m = f"m(empty) = {_num(circuit.m_empty)}, m(clean) = {_num(circuit.m_clean)}"
    if all(v is None for v in values.values()):
        return f"<div>No 0-node point stored ({m}).</div>"
    shown = ", ".join(
        f"{html.escape(k)} <b>{_num(v)}</b>" for k, v in values.items() if v is not None
    )
    return (
        f"<div>At 0 nodes (every node ablated; {m}): {shown}. A log axis has no 0, so those "
        "points are drawn apart, as open circles at the tick labelled 0.</div>"
    )


def _curve_figure(circuit: CircuitRow, curves: dict[str, circuit_graph.Curve]):
    import plotly.graph_objects as go

    zero_at = circuit_graph.zero_position(curves)
    fig = go.Figure([_curve_trace(c) for c in curves.values()])
    zeros = [c for c in curves.values() if c.at(0) is not None]
    if zeros:
        fig.add_trace(_zero_trace(zeros, zero_at))
    every = [c for c in curves.values() if c.everything]
    if every:
        fig.add_trace(_everything_trace(every))
    if circuit.faithfulness is not None and circuit.n_nodes > 0:
        fig.add_trace(_kept_trace(circuit))
    largest = max(
        [n for c in curves.values() for n, _ in c.points] + [c.everything[0] for c in every] + [1]
    )
    tickvals, ticktext = circuit_graph.log_ticks(zero_at, largest)
    fig.update_xaxes(
        type="log", tickvals=tickvals, ticktext=ticktext, title="nodes kept (log scale)"
    )
    fig.update_layout(title="Faithfulness and completeness by circuit size", height=380)
    return fig


def _kept_trace(circuit: CircuitRow):
    import plotly.graph_objects as go

    return go.Scatter(
        x=[circuit.n_nodes],
        y=[circuit.faithfulness],
        mode="markers",
        name=f"kept circuit ({circuit.n_nodes})",
        marker={"symbol": "diamond-open", "size": 16, "color": "#2ca02c", "line": {"width": 2}},
        hovertemplate="kept circuit: %{x} nodes, faithfulness %{y:.3g}<extra></extra>",
    )


def _curve_trace(curve: circuit_graph.Curve):
    import plotly.graph_objects as go

    points = [(n, v) for n, v in curve.points if n > 0]
    return go.Scatter(
        x=[n for n, _ in points],
        y=[v for _, v in points],
        mode="lines+markers",
        name=curve.kind,
        line={"color": COLORS.get(curve.kind)},
        hovertemplate=f"{html.escape(curve.kind)}: %{{x}} nodes, %{{y:.3g}}<extra></extra>",
    )


def _zero_trace(curves: list[circuit_graph.Curve], zero_at: float):
    """The 0-node points, apart from the lines, at the stand-in position labelled 0."""
    import plotly.graph_objects as go

    return go.Scatter(
        x=[zero_at] * len(curves),
        y=[c.at(0) for c in curves],
        customdata=[html.escape(c.kind) for c in curves],
        mode="markers",
        name="0 nodes (every node ablated)",
        marker={
            "symbol": "circle-open",
            "size": 11,
            "color": [COLORS.get(c.kind, "#333") for c in curves],
            "line": {"width": 2},
        },
        hovertemplate="%{customdata}: 0 nodes, %{y:.3g}<extra></extra>",
    )


def _everything_trace(curves: list[circuit_graph.Curve]):
    import plotly.graph_objects as go

    sizes = sorted({c.everything[0] for c in curves})
    return go.Scatter(
        x=[c.everything[0] for c in curves],
        y=[c.everything[1] for c in curves],
        customdata=[html.escape(c.kind) for c in curves],
        mode="markers+text",
        name="every node (" + ", ".join(f"{n:,}" for n in sizes) + ")",
        text=[f"every node ({c.everything[0]:,})" if i == 0 else "" for i, c in enumerate(curves)],
        textposition="bottom center",
        marker={
            "symbol": "star",
            "size": 16,
            "color": [COLORS.get(c.kind, "#333") for c in curves],
            "line": {"width": 1, "color": "#333"},
        },
        hovertemplate="%{customdata}, every node: %{x} nodes, %{y:.3g}<extra></extra>",
    )
