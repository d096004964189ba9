"""The notebook API around graphs: `saelab.graph_figure` draws what `saelab.graph` stored, and
`saelab.graph_agreement` is `graph_check.agreement` with one-line refusals."""

from __future__ import annotations

import pytest

from saelab.base.errors import UserError
from tests.circuits.graph_fixtures import save_transcoders

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def stored(model, tmp_path_factory):
    import saelab

    folder = tmp_path_factory.mktemp("graph-api")
    db = str(folder / "r.duckdb")
    cfg = saelab.GraphConfig(transcoders=save_transcoders(folder / "tcs", layers=(1, 2)),
                             prompt=PROMPT, db=db, node_budget=30, progress=False)  # fmt: skip
    return db, saelab.graph(cfg, model=model)


def test_graph_figure_draws_the_stored_graph(stored):
    import saelab

    db, result = stored
    fig = saelab.graph_figure(db, node_threshold=1.0, edge_threshold=1.0)
    drawn = {
        point[0]
        for trace in fig.data
        if trace.mode and "markers" in trace.mode and trace.customdata is not None
        for point in trace.customdata
    }
    stored_nodes = {n.node for n in result.nodes}
    touched = {e.source for e in result.edges} | {e.target for e in result.edges}
    logits = {n.node for n in result.nodes if n.kind == "logit"}
    # every threshold at 1: every stored node an edge touches, and the logits, are drawn
    assert drawn == (stored_nodes & touched) | logits
    assert repr(result.run.target_strs[0]) in fig.layout.title.text
    with pytest.raises(UserError, match="no graph 'nope'"):
        saelab.graph_figure(db, "nope")


def test_graph_figure_without_graphs_is_refused(tmp_path):
    import saelab
    from saelab.resultstore import ResultsStore

    db = str(tmp_path / "empty.duckdb")
    with ResultsStore(db, mode="write").transaction():
        pass  # an empty, migrated results file
    with pytest.raises(UserError, match="no attribution graph in"):
        saelab.graph_figure(db)


def test_graph_agreement_is_the_checks_agreement(model, stored):
    import saelab
    from saelab.circuits.graph_check import agreement

    _, result = stored
    got = saelab.graph_agreement(result, model=model, n_nodes=5, factor=0.0, freeze="all")
    want = agreement(model, result.replacement, result.graph, 5, 0.0, 0, "all")
    assert [(c.node, c.predicted) for c in got.checks] == [
        (c.node, c.predicted) for c in want.checks
    ]
    # everything frozen: the real model is the graph's linear model, measured == predicted
    for c in got.checks:
        assert c.measured == pytest.approx(c.predicted, abs=1e-3 * max(abs(c.predicted), 0.1))
    with pytest.raises(UserError, match="takes the result of saelab.graph"):
        saelab.graph_agreement(result.run, model=model)
    with pytest.raises(UserError, match="`freeze` must be one of"):
        saelab.graph_agreement(result, model=model, freeze="mlps")
    with pytest.raises(UserError, match="target logits, got 3"):
        saelab.graph_agreement(result, model=model, target=3)
