"""Circuits: the circuits in the file, drawn as a graph (layers and submodules as columns,
node size by effect, edges by sign), a node opens its feature, and the faithfulness and
completeness curves. A friendly empty state until the file holds circuits."""

from __future__ import annotations

import html

import streamlit as st

from app import circuit_graph, common

EMPTY = (
    "No circuits in this results file yet. Find one with `saelab circuit --sae DIR --task sva "
    "--db FILE` (the demo ends with one); it will show here."
)


def render() -> None:
    st.title("Circuits")
    circuits = common.q("rows_of", "circuits", None)
    if not circuits:
        st.info(EMPTY)
        return
    id_col = circuit_graph.column(circuits[0], "circuit") or next(iter(circuits[0]))
    labels = {c[id_col]: _label(c, id_col) for c in circuits}
    ids = list(labels)
    wanted = st.query_params.get("circuit")
    index = next((i for i, c in enumerate(ids) if str(c) == wanted), 0)
    choice = st.selectbox("Circuit", ids, index=index, format_func=labels.get, key="circuit_pick")
    st.query_params["circuit"] = str(choice)
    circuit = next(c for c in circuits if c[id_col] == choice)
    nodes = common.q("rows_of", "circuit_nodes", {id_col: choice})
    edges = common.q("rows_of", "circuit_edges", {id_col: choice})
    _summary(circuit)
    graph = circuit_graph.build_graph(nodes, edges)
    if not graph.nodes:
        st.info("This circuit kept no nodes.")
    else:
        _draw(graph)
    curve_rows = common.q("rows_of", "circuit_curves", {id_col: choice})
    _curves(circuit_graph.curves_from(circuit, curve_rows))


def _label(c: dict, id_col: str) -> str:
    parts = [str(c.get(k)) for k in ("task", "method") if c.get(k) is not None]
    return " · ".join([str(c[id_col])[:12], *parts])


def _summary(circuit: dict) -> None:
    simple = {
        k: v
        for k, v in circuit.items()
        if isinstance(v, (int, float, str)) and not str(k).endswith("json")
    }
    st.dataframe(
        [{"field": k, "value": common.fmt(v)} for k, v in simple.items()],
        hide_index=True,
        key="circuit_fields",
    )


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
                [n.feature if n.feature is not None else -1, n.sae_id or ""] for n in graph.nodes
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
        ticktext=[f"L{layer} {sub}" for layer, sub in graph.columns],
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
        common.goto("feature", sae=sae_id or _sae_for(features[0]), feature=feature)
    if features:
        names = {i: n.label for i, n in enumerate(features)}
        i = st.selectbox(
            "Open a node's feature", list(names), format_func=names.get, key="circuit_node"
        )
        if st.button("Open feature", key="circuit_open"):
            node = features[i]
            common.goto("feature", sae=node.sae_id or _sae_for(node), feature=node.feature)


def _sae_for(node: circuit_graph.Node) -> str:
    """The SAE spliced at the node's layer and submodule (when nodes do not name it)."""
    for sae in common.q("sae_list"):
        hook = str(sae["hook"])
        if hook.startswith(f"blocks.{node.layer}.") and node.submodule in hook:
            return sae["sae_id"]
    return ""


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
