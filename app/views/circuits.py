"""Circuits: the circuits in the file, drawn as a graph (layers and submodules as columns,
node size by effect, edges by sign), a node opens its feature, and the faithfulness and
completeness curves. A friendly empty state until the file holds circuits."""

from __future__ import annotations

import html

import streamlit as st

from saelab.app import circuit_graph, common

TITLE = "Circuits"
ICON = ":material/account_tree:"

EMPTY = (
    "No circuits in this results file yet. Find one with `saelab circuit --sae DIR --task sva "
    "--db FILE` (the demo ends with one); it will show here."
)


_FIELDS = (
    "task", "n_prompts", "method", "baseline", "clean_accuracy", "m_clean", "m_patch", "m_empty",
    "n_nodes", "n_edges", "faithfulness", "completeness", "edge_correlation", "node_threshold",
    "edge_threshold", "ablation", "error_policy", "per_position", "model", "seconds",
    "created_at", "circuit_id",
)  # fmt: skip


def render() -> None:
    st.title("Circuits")
    circuits = common.q("list_circuits")
    if not circuits:
        st.info(EMPTY)
        return
    labels = {c.circuit_id: _label(c) for c in circuits}
    ids = list(labels)
    wanted = st.query_params.get("circuit")
    index = ids.index(wanted) if wanted in ids else 0
    choice = st.selectbox("Circuit", ids, index=index, format_func=labels.get, key="circuit_pick")
    st.query_params["circuit"] = choice
    circuit = next(c for c in circuits if c.circuit_id == choice)
    st.dataframe(
        [{"field": k, "value": common.fmt(getattr(circuit, k))} for k in _FIELDS],
        hide_index=True,
        key="circuit_fields",
    )
    graph = circuit_graph.build_graph(
        common.q("circuit_nodes", choice), common.q("circuit_edges", choice)
    )
    if not graph.nodes:
        st.info("This circuit kept no nodes.")
    else:
        _draw(graph)
    _curves(circuit_graph.curves_from(common.q("circuit_curves", choice)))


def _label(c) -> str:
    return f"{c.circuit_id[:12]} · {c.task} · {c.method} · {c.n_nodes} nodes"


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
            text=[html.escape(n.label) for n in graph.nodes],
            textposition="middle right",  # beside: stacked labels never overlap
            customdata=[
                [n.feature if n.feature is not None else -1, n.row.sae_id] for n in graph.nodes
            ],
            hovertemplate="%{text}<br>effect %{marker.color:.3g}<extra></extra>",
            marker={
                "size": [circuit_graph.node_size(n.effect, largest) for n in graph.nodes],
                "color": [n.effect for n in graph.nodes],
                "colorscale": "RdBu",
                "cmid": 0,
                "symbol": ["circle" if n.feature is not None else "square" for n in graph.nodes],
                "line": {"width": 1, "color": "#333"},
            },
            showlegend=False,
        )
    )
    fig.update_xaxes(
        range=[-0.3, len(graph.columns) - 0.4],  # room for the last column's labels
        tickvals=list(range(len(graph.columns))),
        ticktext=[f"L{layer} {circuit_graph.short(sub)}" for layer, sub in graph.columns],
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


def _curves(curves: dict) -> None:
    import plotly.graph_objects as go

    if not curves:
        st.caption("No faithfulness or completeness curves stored for this circuit.")
        return
    fig = go.Figure(
        [
            go.Scatter(
                x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=name
            )
            for name, pts in curves.items()
        ]
    )
    fig.update_layout(
        title="Faithfulness and completeness by circuit size", xaxis_title="nodes kept", height=340
    )
    st.plotly_chart(fig, key="circuit_curves")
