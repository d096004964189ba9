"""Graphs: the attribution graphs in the file (newest first). One graph's prompt tokens, its
target(s) with their probabilities, the replacement and completeness scores of the unpruned and
the stored (pruned) graph, and the graph drawn with layers as rows and tokens as columns, thinned
further by two sliders; a click on a node (or the node picker) shows its edges and, for a
latent, its dashboard (examples, explanations, logit effects: what the Feature page shows) with
a link to its Feature page. The node table, the provenance and an HTML download close the page.
A friendly empty state says how to build a graph."""

from __future__ import annotations

import html
import urllib.parse

import streamlit as st

from saelab.app import attribution_graph as ag
from saelab.app import common
from saelab.app.tokens import markdown_literal
from saelab.resultstore import GraphRunRow

TITLE = "Graphs"
ICON = ":material/hub:"

EMPTY = (
    "No attribution graphs in this results file yet. Build one with "
    "`saelab graph --transcoders DIR... --prompt TEXT --db FILE` (one transcoder folder per "
    "layer; the target defaults to the model's top prediction); it will show here."
)

LEGEND = (
    "How to read it: each row is a layer (token embeddings at the bottom, output logits on top) "
    "and each column a token of the prompt. **Circles** are transcoder latents active at that "
    "token, **diamonds** the error of that layer's dictionary at that token (what it does not "
    "explain), **squares** the token embeddings and **hexagons** the target logits. A node's "
    "size is its influence on the target(s); an edge is a direct linear effect in the frozen "
    "replacement model, blue when it raises its target node and red when it lowers it, wider "
    "the stronger. Hover a node for its explanation and numbers; click one (or pick it below) "
    "to see its edges and dashboard."
)

NODE_KEY = "graph_node"
_CLICKED = "_graph_clicked"


def render() -> None:
    st.title("Attribution graphs")
    runs: list[GraphRunRow] = common.q("graph_runs")
    if not runs:
        st.info(EMPTY)
        return
    run = _pick_graph(runs)
    nodes = common.q("graph_nodes", run.graph_id)
    edges = common.q("graph_edges", run.graph_id)
    explanations = _explanations(nodes)
    _prompt(run)
    _scores(run)
    pruning = _sliders()
    kept_nodes, kept_edges = ag.prune(nodes, edges, pruning)
    graph = ag.layout(run, kept_nodes, kept_edges, explanations)
    st.caption(
        f"Showing {len(graph.nodes)} of the {len(nodes)} stored nodes and {len(graph.edges)} of "
        f"the {len(edges)} stored edges (the unpruned graph had {run.n_nodes_total:,} nodes)."
    )
    if not graph.nodes:
        st.info("No node is left at these thresholds: raise them.")
        return
    clicked = _draw(graph)
    st.caption(LEGEND)
    node = _pick_node(graph, clicked)
    if node is not None:
        _node_panel(graph, node)
    _node_table(graph)
    _provenance(run)
    st.download_button(
        "Download this graph as HTML",
        data=lambda: ag.graph_html(run, nodes, edges, explanations),
        file_name=f"graph-{run.graph_id}.html",
        mime="text/html",
        key="graph_download",
        on_click="ignore",
        icon=":material/download:",
    )


def _pick_graph(runs: list[GraphRunRow]) -> GraphRunRow:
    labels = {r.graph_id: ag.run_label(r) for r in runs}
    ids = list(labels)
    wanted = st.query_params.get("graph")
    if wanted and wanted not in ids:
        common.bad_param("graph", wanted, "names no graph of this results file", "the newest")
    index = ids.index(wanted) if wanted in ids else 0
    choice = st.selectbox("Graph", ids, index=index, format_func=labels.get, key="graph_pick")
    if st.query_params.get("graph") != choice:
        st.query_params["graph"] = choice
        st.session_state.pop(NODE_KEY, None)  # another graph: its own default node
    return next(r for r in runs if r.graph_id == choice)


def _explanations(nodes) -> ag.Explanations:
    out: ag.Explanations = {}
    for sae_id, features in ag.explained_latents(nodes).items():
        texts = common.q("explanation_texts", sae_id, features)
        out.update({(sae_id, f): t for f, t in texts.items() if t})
    return out


def _prompt(run: GraphRunRow) -> None:
    targets = " ".join(
        f'<span class="tok" style="border-color:#9467bd"><b>{html.escape(ag.token_text(s))}</b>'
        f" p {p:.3g}</span>"
        for s, p in zip(run.target_strs, run.target_probs)
    )
    st.html(
        "<style>.saelab-graph-prompt .tok{display:inline-block;border:1px solid #ccc;"
        "border-radius:4px;padding:1px 5px;margin:2px;font-family:monospace;white-space:pre}"
        ".saelab-graph-prompt .tok small{color:#999;margin-right:4px}</style>"
        '<div class="saelab-graph-prompt"><div>'
        f"<b>Prompt</b> ({len(run.token_strs)} tokens) {ag.tokens_html(run.token_strs)}</div>"
        f"<div><b>Target{'s' if len(run.targets) > 1 else ''}</b> {targets}</div>"
        f'<div style="color:#666">model {html.escape(run.model)} · '
        f"{html.escape(run.dictionary)} · {len(run.sae_ids)} dictionaries</div></div>"
    )


def _scores(run: GraphRunRow) -> None:
    cols = st.columns(4)
    replacement = (
        "The fraction of the targets' attribution that reaches them from the token embeddings "
        "rather than through error nodes (circuit-tracer's replacement score; 1: the "
        "replacement model explains it all)."
    )
    completeness = (
        "The influence-weighted fraction of every node's input that comes from nodes rather "
        "than error nodes (circuit-tracer's completeness score)."
    )
    cols[0].metric(
        "replacement · unpruned",
        f"{run.replacement_score:.3f}",
        help=replacement + f" Of the unpruned graph ({run.n_nodes_total:,} nodes).",
    )
    cols[1].metric("completeness · unpruned", f"{run.completeness_score:.3f}", help=completeness)
    cols[2].metric(
        "replacement · pruned",
        f"{run.replacement_score_pruned:.3f}",
        help=replacement + f" Of the stored, pruned graph ({run.n_nodes} nodes, {run.n_edges} "
        "edges).",
    )
    cols[3].metric(
        "completeness · pruned", f"{run.completeness_score_pruned:.3f}",
        help=completeness + " Of the stored, pruned graph.",
    )  # fmt: skip


def _sliders() -> ag.Pruning:
    cols = st.columns(2)
    node_threshold = cols[0].slider(
        "Nodes: keep the most influential, covering this share of influence",
        min_value=0.05, max_value=1.0, value=0.8, step=0.05, key="graph_node_threshold",
        help="1 shows every stored node; logit nodes always stay. Nodes no shown edge touches "
        "are hidden.",
    )  # fmt: skip
    edge_threshold = cols[1].slider(
        "Edges: keep the strongest, covering this share of |weight|",
        min_value=0.5, max_value=1.0, value=0.98, step=0.01, key="graph_edge_threshold",
        help="Among the edges between shown nodes; 1 shows all of them.",
    )  # fmt: skip
    return ag.Pruning(node_threshold=node_threshold, edge_threshold=edge_threshold)


def _draw(graph: ag.Layout) -> str | None:
    """Draw the graph; the node id a click selected, if any."""
    fig = ag.figure(graph)
    event = st.plotly_chart(
        fig, key="graph_figure", on_select="rerun", selection_mode="points", theme=None
    )
    points = [p for p in (event.selection.points if event else []) if p.get("customdata")]
    return str(points[0]["customdata"][0]) if points else None


def _pick_node(graph: ag.Layout, clicked: str | None) -> ag.Node | None:
    """The node picker, in step with clicks on the figure and the `node` query parameter."""
    ordered = sorted(graph.nodes, key=lambda n: (not n.is_latent, -abs(n.row.influence), n.id))
    ids = [n.id for n in ordered]
    labels = {n.id: f"{n.label} · influence {n.row.influence:.3g}" for n in ordered}
    if clicked is not None and clicked != st.session_state.get(_CLICKED) and clicked in ids:
        st.session_state[NODE_KEY] = clicked  # a new click wins over the picker
    st.session_state[_CLICKED] = clicked
    asked = st.query_params.get("node")
    if NODE_KEY not in st.session_state and asked in ids:
        st.session_state[NODE_KEY] = asked
    if st.session_state.get(NODE_KEY) not in ids:
        st.session_state[NODE_KEY] = ids[0]
    choice = st.selectbox("Node", ids, format_func=labels.get, key=NODE_KEY)
    if st.query_params.get("node") != choice:
        st.query_params["node"] = choice
    return next(n for n in ordered if n.id == choice)


def _node_panel(graph: ag.Layout, node: ag.Node) -> None:
    r = node.row
    st.subheader(markdown_literal(node.label))
    what = {
        "embedding": f"The embedding of token {ag.token_text(r.label or '')} (id {r.feature}) at "
        f"position {r.pos}.",
        "error": f"What layer {r.layer}'s dictionary does not reconstruct at position {r.pos} "
        f"(norm {common.fmt(r.activation)}), kept as a node of its own.",
        "logit": f"The target logit of token {ag.token_text(r.label or '')} (id {r.feature}), "
        f"probability {common.fmt(r.activation)}.",
        "latent": f"Latent {r.feature} of layer {r.layer}'s dictionary at position {r.pos}, "
        f"activation {common.fmt(r.activation)}.",
    }.get(r.kind, r.node)
    st.markdown(f"{markdown_literal(what)} Influence on the targets: **{r.influence:.3g}**.")
    links = ag.node_edges(graph, node.id)
    cols = st.columns(2)
    for col, (side, title) in zip(cols, (("from", "Strongest inputs"), ("to", "Strongest outputs"))):  # fmt: skip
        col.markdown(f"**{title}** (drawn edges)")
        if links[side]:
            col.dataframe(links[side], hide_index=True, key=f"graph_edges_{side}")
        else:
            col.caption("none drawn")
    if node.is_latent:
        _latent_dashboard(r.sae_id, int(r.feature))


def _latent_dashboard(sae_id: str, feature: int) -> None:
    from saelab.app.views import feature as feature_page

    url = ag.feature_url(urllib.parse.quote(sae_id, safe=""), feature)
    st.markdown(f"[Open latent {feature} on the Feature page]({url})")
    if st.button(
        "Open on the Feature page", key="graph_open_feature", icon=":material/bubble_chart:"
    ):
        common.goto("feature", sae=sae_id, feature=feature)
    if not common.q("feature_stats_exist", sae_id):
        st.info(
            "No feature statistics for this dictionary yet: run `saelab eval --evals features` "
            "on it to see its examples here."
        )
        return
    try:
        dash = common.q("feature_dashboard", sae_id, feature)
    except common.db.UserError as err:
        st.caption(f"No dashboard: {err}")
        return
    feature_page._stats(dash.stats)
    if dash.stats.dead:
        st.caption("Dead latent in the features eval's corpus: no examples stored.")
        return
    left, right = st.columns([3, 2])
    with left:
        feature_page._examples(dash)
    with right:
        feature_page._explanations(dash)
        feature_page._logits(dash)


def _node_table(graph: ag.Layout) -> None:
    st.subheader("Node table")
    st.dataframe(
        ag.node_table(graph),
        hide_index=True,
        key="graph_nodes_table",
        column_config={
            "label": st.column_config.TextColumn(width="large"),
            "explanation": st.column_config.TextColumn(width="large"),
            "feature page": st.column_config.LinkColumn(
                help="Open the latent's Feature page", display_text="open"
            ),
        },
    )


def _provenance(run: GraphRunRow) -> None:
    with st.expander("Provenance and settings"):
        fields = [
            "graph_id", "model", "model_sha256", "dictionary", "node_budget", "edge_budget",
            "n_nodes_total", "n_nodes", "n_edges", "seconds", "saelab_version", "created_at",
            "config_hash",
        ]  # fmt: skip
        rows = [{"field": k, "value": common.fmt(getattr(run, k))} for k in fields]
        rows += [
            {"field": f"dictionary {i}", "value": f"{sae} · {hook}"}
            for i, (sae, hook) in enumerate(zip(run.sae_ids, run.hooks))
        ]
        st.dataframe(rows, hide_index=True, key="graph_provenance")
        st.code(run.config_json or "{}", language="json")
