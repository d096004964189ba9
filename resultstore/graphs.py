"""Rows owned by attribution graphs: `graph_runs`, `graph_nodes`, `graph_edges`.

A graph writes all its rows (and registers its dictionaries) in one transaction. Its id is
derived from what decides it (config, prompt, targets, dictionaries, model), so building the
same graph again replaces it.
"""

from __future__ import annotations

import hashlib

from saelab.resultstore.rows import GraphEdgeRow, GraphNodeRow, GraphRunRow, SAERow
from saelab.resultstore.saes import register_sae
from saelab.resultstore.store import ResultsStore, insert

GRAPH_ROWS = (GraphRunRow, GraphNodeRow, GraphEdgeRow)
GRAPH_TABLES = tuple(cls.TABLE for cls in GRAPH_ROWS)
NODE_KINDS = ("embedding", "latent", "error", "logit")


def graph_id(
    config_hash: str, tokens: list[int], targets: list[int], sae_ids: list[str], model_sha256: str
) -> str:
    """The same config, prompt, targets, dictionaries and model give the same id."""
    key = "|".join(
        ["graph", config_hash, ",".join(map(str, tokens)), ",".join(map(str, targets)),
         *sae_ids, model_sha256]
    )  # fmt: skip
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def write_graph(
    store: ResultsStore,
    run: GraphRunRow,
    nodes: list[GraphNodeRow],
    edges: list[GraphEdgeRow],
    saes: list[SAERow],
) -> str:
    """Store one graph with every node and edge, replacing an earlier graph with its id."""
    gid = run.graph_id
    if any(r.graph_id != gid for r in [*nodes, *edges]):
        raise ValueError("every node and edge row must carry the graph's id")
    names = {n.node for n in nodes}
    missing = {e.source for e in edges} | {e.target for e in edges}
    missing -= names
    if missing:
        raise ValueError(f"edges name nodes the graph does not keep: {sorted(missing)[:3]}")
    bad = {n.kind for n in nodes} - set(NODE_KINDS)
    if bad:
        raise ValueError(f"unknown node kind(s) {sorted(bad)}; known: {', '.join(NODE_KINDS)}")
    with store.transaction() as con:
        for sae in saes:
            register_sae(con, sae, store)
        for cls in GRAPH_ROWS:  # table names are constants
            con.execute(f"DELETE FROM {cls.TABLE} WHERE graph_id = ?", [gid])
        insert(con, [run])
        insert(con, nodes)
        insert(con, edges)
    return gid


def graph_runs(store: ResultsStore) -> list[GraphRunRow]:
    """Every stored graph, newest first."""
    return store.select(GraphRunRow, order="created_at DESC")


def graph_nodes(store: ResultsStore, gid: str) -> list[GraphNodeRow]:
    """A graph's nodes, most influential first."""
    return store.select(GraphNodeRow, "graph_id = ?", [gid], order="influence DESC, node")


def graph_edges(store: ResultsStore, gid: str) -> list[GraphEdgeRow]:
    """A graph's edges, largest |weight| first."""
    return store.select(GraphEdgeRow, "graph_id = ?", [gid], order="abs(weight) DESC, source")
