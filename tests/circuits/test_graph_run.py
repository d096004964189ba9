"""`run_graph`, `saelab graph` and `saelab.graph`: what lands in the results file, and the
one-line refusals."""

from __future__ import annotations

import pytest
import torch

from saelab.base.errors import UserError
from tests.circuits.graph_fixtures import save_transcoders

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_transcoders(tmp_path_factory.mktemp("graph-tcs"), layers=(1, 3))


def test_run_graph_stores_a_pruned_graph_with_its_scores(model, folders, tmp_path):
    from saelab import resultstore as results
    from saelab.circuits.graph_prune import graph_scores
    from saelab.circuits.graph_run import GraphConfig, node_names, run_graph

    db = str(tmp_path / "r.duckdb")
    cfg = GraphConfig(transcoders=folders, prompt=PROMPT, db=db, node_budget=400,
                      edge_budget=3000, node_threshold=1.0, progress=False)  # fmt: skip
    res = run_graph(cfg, model=model, log=lambda *_: None)
    # default target: the top prediction of the real model
    assert res.run.targets == [int(res.replacement.frozen.logits[-1].argmax())]
    store = results.ResultsStore(db, mode="read")
    (run,) = results.graph_runs(store)
    assert run.graph_id == res.graph_id and run.dictionary == "transcoders"
    assert run.n_nodes_total == res.graph.size and run.n_edges == len(res.edges) <= 3000
    kinds = res.graph.kinds()
    error = torch.tensor([k == "error" for k in kinds])
    embed = torch.tensor([k == "embedding" for k in kinds])
    w = res.graph.logit_weights().double()
    replacement, completeness = graph_scores(res.graph.adjacency.double(), w, error, embed)
    assert run.replacement_score == pytest.approx(replacement)
    assert run.completeness_score == pytest.approx(completeness)
    assert 0 <= run.replacement_score_pruned <= 1 and 0 <= run.completeness_score_pruned <= 1
    nodes = results.graph_nodes(store, run.graph_id)
    inner = [n for n in nodes if n.kind in ("latent", "error")]
    assert 0 < len(inner) <= 400
    assert sum(n.kind == "embedding" for n in nodes) == len(run.tokens)
    assert {n.kind for n in nodes} >= {"embedding", "logit"}
    names = {n.node for n in nodes}
    edges = results.graph_edges(store, run.graph_id)
    assert edges and all(e.source in names and e.target in names for e in edges)
    # each stored edge is the adjacency's entry
    index = {name: i for i, name in enumerate(node_names(res.graph))}
    a = res.graph.adjacency
    for e in edges[:20]:
        assert e.weight == pytest.approx(float(a[index[e.target], index[e.source]]))
    latent = next(n for n in nodes if n.kind == "latent")
    assert latent.sae_id in run.sae_ids and latent.hook.endswith("ln2.hook_normalized")
    assert run.config["transcoder_ids"] == run.sae_ids and run.config["prompt"] == PROMPT
    # the same graph again replaces the first
    run_graph(cfg, model=model, log=lambda *_: None)
    assert len(results.graph_runs(results.ResultsStore(db, mode="read"))) == 1


def test_the_command_with_targets(model, folders, tmp_path, capsys, monkeypatch):
    import saelab.api
    from saelab.cli import main

    monkeypatch.setattr(saelab.api, "_MODELS", {("smollm2-135m", "cpu"): model})
    db = str(tmp_path / "r.duckdb")
    code = main(["graph", "--transcoders", *folders, "--prompt", PROMPT, "--target", " Paris",
                 " the", "--db", db, "--no-progress", "--node-budget", "10"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "' Paris' (p=" in out and "replacement score" in out


def test_bad_input_is_refused_in_one_line(model, folders, tmp_path):
    from saelab.circuits.graph_run import GraphConfig, run_graph

    def run(**kw):
        cfg = GraphConfig(**{"transcoders": folders, "prompt": PROMPT, "progress": False, **kw})
        return run_graph(cfg, model=model, log=lambda *_: None)

    with pytest.raises(UserError, match="is 3 tokens"):
        run(targets=[" Parisian capital"])
    with pytest.raises(UserError, match="prompt is empty"):
        run(prompt="  ")
    with pytest.raises(UserError, match="give `db` with `html`"):
        run(html=str(tmp_path / "g.html"))
    with pytest.raises(UserError, match="two transcoders for layer 1"):
        run(transcoders=[folders[0], folders[0]])
    with pytest.raises(UserError, match="neither an SAE folder"):
        run(transcoders=[str(tmp_path)])


def test_the_command_prints_the_most_influential_nodes_and_heaviest_edges_first():
    from types import SimpleNamespace

    from saelab import resultstore as results
    from saelab.commands.graph import report

    nodes = [
        results.GraphNodeRow("g", f"L0.f{i}@1", "latent", 0, 1, i, None, None, 1.0, inf, None)
        for i, inf in enumerate([0.1, 0.7, 0.3])
    ]
    edges = [results.GraphEdgeRow("g", "a", "b", w) for w in (0.2, -0.9, 0.5)]
    run = SimpleNamespace(
        prompt="p", tokens=[1], target_strs=[" x"], target_probs=[0.5], n_nodes_total=3,
        n_nodes=3, n_edges=3,
    )  # fmt: skip
    scores = SimpleNamespace(
        replacement=0.5, replacement_pruned=0.4, completeness=0.9, completeness_pruned=0.8
    )
    text = report(SimpleNamespace(run=run, scores=scores, nodes=nodes, edges=edges), show=2)
    lines = text.splitlines()[3:]
    assert [ln.split()[0] for ln in lines[:2]] == ["L0.f1@1", "L0.f2@1"]
    assert [float(ln.split()[-1]) for ln in lines[2:]] == [-0.9, 0.5]
