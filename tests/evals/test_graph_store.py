"""The attribution-graph and head-attribution tables: write, replace, read back, refuse."""

from __future__ import annotations

import pytest

from saelab import resultstore as results


def _graph(gid: str, n_extra: int = 0):
    run = results.GraphRunRow(
        graph_id=gid, model="m", model_sha256="abc", prompt="The cat <b>sat</b>",
        tokens=[1, 2, 3], token_strs=["<s>", "The", " cat"], targets=[7], target_strs=[" sat"],
        target_probs=[0.25], sae_ids=[], hooks=["blocks.0.ln2.hook_normalized"],
        dictionary="transcoders", node_budget=10, edge_budget=20, n_nodes_total=50, n_nodes=3,
        n_edges=2, replacement_score=0.8, completeness_score=0.9,
        replacement_score_pruned=0.7, completeness_score_pruned=0.85, config_json="{}",
        config_hash="h", seconds=1.5, saelab_version="0",
    )  # fmt: skip
    nodes = [
        results.GraphNodeRow(gid, "emb@1", "embedding", -1, 1, 2, None, None, None, 1.0, "The"),
        results.GraphNodeRow(gid, "L0.f5@1", "latent", 0, 1, 5, None, "h", 2.5, 0.6, None),
        results.GraphNodeRow(gid, "logit.7", "logit", 30, 2, 7, None, None, 0.25, 0.0, " sat"),
    ]
    edges = [
        results.GraphEdgeRow(gid, "emb@1", "L0.f5@1", 0.5 + n_extra),
        results.GraphEdgeRow(gid, "L0.f5@1", "logit.7", -2.0),
    ]
    return run, nodes, edges


def test_graph_rows_round_trip_and_replace(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", mode="write")
    gid = results.graph_id("h", [1, 2, 3], [7], [], "abc")
    assert gid == results.graph_id("h", [1, 2, 3], [7], [], "abc")
    assert gid != results.graph_id("h", [1, 2, 3], [8], [], "abc")
    results.write_graph(store, *_graph(gid), [])
    results.write_graph(store, *_graph(gid, n_extra=1), [])  # same id: replaced, not doubled
    [run] = results.graph_runs(store)
    assert run.prompt == "The cat <b>sat</b>" and run.target_probs == [0.25]
    nodes = results.graph_nodes(store, gid)
    assert [n.node for n in nodes] == ["emb@1", "L0.f5@1", "logit.7"]  # by influence
    edges = results.graph_edges(store, gid)
    assert [(e.source, e.weight) for e in edges] == [("L0.f5@1", -2.0), ("emb@1", 1.5)]


def test_graph_refuses_dangling_edges_and_unknown_kinds(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", mode="write")
    run, nodes, edges = _graph("g")
    with pytest.raises(ValueError, match="does not keep"):
        results.write_graph(store, run, nodes[:2], edges, [])
    nodes[0].kind = "neuron"
    with pytest.raises(ValueError, match="unknown node kind"):
        results.write_graph(store, run, nodes, edges, [])
    assert results.graph_runs(store) == []  # nothing half-written


def test_feature_heads_replace_per_sae(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", mode="write")
    rows = [
        results.FeatureHeadRow("s", 3, h, share, None, 0) for h, share in enumerate([0.75, 0.25])
    ]
    results.write_feature_heads(store, "s", rows)
    results.write_feature_heads(store, "s", rows[:1])
    assert [(r.head, r.norm_share) for r in results.feature_heads(store, "s", 3)] == [(0, 0.75)]
    assert results.feature_heads(store, "s", 4) == []
