"""Attribution graphs with attention-output SAEs (on blocks.L.attn.hook_z) beside transcoders:
the frozen replacement model against the real model, every edge against a finite-difference
intervention of the frozen replacement model (float64), and `run_graph` end to end."""

from __future__ import annotations

import pytest
import torch

from saelab.base.errors import UserError
from tests.circuits.graph_fixtures import check_edges_by_finite_differences, random_transcoder

TC_LAYERS = {1: False, 3: True, 4: False}  # layer -> skip transcoder
ATTN_LAYERS = (2, 4)  # layer 4: an attention SAE and a transcoder in one block


def random_attention_sae(layer: int, d_sae: int = 48, k: int = 4, seed: int = 0):
    """A TopK SAE on blocks.L.attn.hook_z (input centred by b_dec) with seeded random weights."""
    from saelab.sae.registry import build_sae, make_config

    sae = build_sae(
        make_config("topk", d_sae=d_sae, k=k, seed=seed, apply_b_dec_to_input=True), 576
    )
    g = torch.Generator().manual_seed(300 + seed)
    with torch.no_grad():
        sae.b_enc.copy_(0.2 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.05 * torch.randn(576, generator=g))
        sae.W_enc.mul_(4.0)
    return sae.eval()


@pytest.fixture(scope="module")
def tokens(model):
    from saelab.activations.corpus import bos_token_id

    bos = bos_token_id(model.tokenizer)
    return [bos] + model.tokenizer.encode("The capital of France is", add_special_tokens=False), bos


def dictionaries():
    tcs = {
        layer: random_transcoder(layer, skip=skip, seed=layer) for layer, skip in TC_LAYERS.items()
    }
    attn = {layer: random_attention_sae(layer, seed=layer) for layer in ATTN_LAYERS}
    return tcs, attn


def test_the_replacement_model_with_attention_saes_reproduces_the_real_logits(model, tokens):
    """Attention latents and error nodes through W_O, transcoders at other layers: the real
    logits to 1e-4 relative (float32), and z recomputed from upstream equals the real hook_z."""
    from saelab.circuits.replacement import build_replacement

    tcs, attn = dictionaries()
    rm = build_replacement(model, tokens[0], tcs, tokens[1], attention_saes=attn)
    z_in: dict = {}
    inputs, final = rm.forward(z_in=z_in)
    real = rm.frozen.logits
    assert (rm.logits(final) - real).abs().max() / real.abs().max() < 1e-4
    x = rm.frozen.mlp_in
    assert (inputs - x).abs().max() / x.abs().max() < 1e-4
    for layer in ATTN_LAYERS:
        z = rm.frozen.z[layer]
        assert (z_in[layer] - z).abs().max() / z.abs().max() < 1e-4
    nodes = rm.nodes
    is_attn = nodes.is_attn()
    assert set(nodes.layer[is_attn].tolist()) == set(ATTN_LAYERS)
    assert rm.n_attn_latents == int(is_attn.sum()) > 0
    assert not bool(is_attn[: nodes.n_latents - rm.n_attn_latents].any())  # attention ones last
    # an attention error node by hand: (z − b_dec − Σ a_i W_dec,i) W_O at layer 2, position 3
    sae = attn[2]
    z = rm.frozen.z[2][3]
    by_hand = (z - sae.decode(sae.encode(z[None]))[0]) @ rm.weights.w_o[2]
    k = ((nodes.error_layer == 2) & nodes.is_attn_error() & (nodes.error_pos == 3)).nonzero()
    torch.testing.assert_close(rm.errors[int(k)], by_hand, rtol=1e-4, atol=1e-4)
    assert int(nodes.pos.min()) >= 1 and int(nodes.error_pos.min()) == 1  # nothing at BOS


def test_every_edge_with_attention_saes_equals_a_finite_difference_intervention(model, tokens):
    """The parity test (the method of test_graph_replacement's): A[t, s] = (input_t(c_s·(1+ε))
    − input_t(c_s)) / ε in the frozen float64 replacement model, an attention latent's input
    being its pre-activation's linear part z · W_enc[:, i] with z recomputed from upstream."""
    from saelab.circuits.graph_attribution import attribute, encoder_rows
    from saelab.circuits.replacement import build_replacement

    tcs, attn = dictionaries()
    rm = build_replacement(model, tokens[0], tcs, tokens[1], torch.float64, attention_saes=attn)
    nodes = rm.nodes
    is_attn = nodes.is_attn()
    targets = torch.tensor([7042, 11])
    graph = attribute(rm, targets, torch.tensor([0.7, 0.1]), demean=True, progress=False)
    assert graph.n_latents == nodes.n_latents
    enc = encoder_rows(rm)
    dirs = rm.unembed_direction(targets, demean=True)

    def target_inputs(scale):
        z_in: dict = {}
        inputs, final = rm.forward(scale, z_in)
        read = inputs[nodes.layer, nodes.pos]
        for layer in ATTN_LAYERS:
            sel = is_attn & (nodes.layer == layer)
            read[sel] = z_in[layer][nodes.pos[sel]]
        return torch.cat([(read * enc).sum(-1), final[-1] @ dirs.t()])

    n_lat, n_err, n_src = nodes.n_latents, nodes.n_errors, nodes.n_sources
    last = max(*TC_LAYERS, *ATTN_LAYERS)
    low = ((nodes.error_layer <= last) | nodes.is_attn_error()).nonzero().squeeze(1)
    high = ((nodes.error_layer > last) & ~nodes.is_attn_error()).nonzero().squeeze(1)
    sample = high[torch.randperm(len(high), generator=torch.Generator().manual_seed(0))[:8]]
    sources = torch.cat([torch.arange(n_lat), n_lat + low, n_lat + sample,
                         torch.arange(n_lat + n_err, n_src)])  # fmt: skip
    rows, scale = check_edges_by_finite_differences(
        graph, target_inputs, sources, n_src, len(targets)
    )
    a = graph.adjacency
    # the attention latents have edges in and out (into layer-4 transcoder latents included)
    assert a[:n_lat][is_attn].abs().max() > 0
    assert a[:n_lat, :n_lat][:, is_attn].abs().max() > 0
    same4 = (nodes.layer == 4) & ~is_attn
    assert a[:n_lat, :n_lat][same4][:, is_attn & (nodes.layer == 4)].abs().max() > 0
    # direct effects only, in block order (attention of L before the MLP of L)
    depth = 2 * nodes.layer + (~is_attn).long()
    later = depth[None, :] >= depth[:, None]
    assert a[:n_lat, :n_lat][later].abs().max() == 0


def test_only_hook_z_saes_are_attention_saes():
    from saelab.circuits.replacement import attention_sae_layer

    assert attention_sae_layer("blocks.7.attn.hook_z") == 7
    with pytest.raises(UserError, match="read blocks.L.attn.hook_z"):
        attention_sae_layer("blocks.7.hook_attn_out")


def test_run_graph_stores_attention_nodes(model, tmp_path):
    """`run_graph` with an attention SAE folder: its latents and error nodes are stored with
    their ids and hook, and the stored scores are the graph's."""
    from saelab import resultstore as results
    from saelab.circuits.graph_check import agreement
    from saelab.circuits.graph_run import GraphConfig, latent_errors, node_names, run_graph
    from saelab.sae.checkpoint import save_sae
    from tests.circuits.graph_fixtures import save_transcoders

    tcs = save_transcoders(tmp_path / "tcs", layers=(1, 3))
    hook = "blocks.2.attn.hook_z"
    attn = str(save_sae(random_attention_sae(2), tmp_path / "attn-2", meta={"hook_name": hook}))
    db = str(tmp_path / "r.duckdb")
    cfg = GraphConfig(transcoders=tcs, attention_saes=[attn], prompt="The capital of France is",
                      db=db, node_budget=400, edge_budget=3000, node_threshold=1.0,
                      progress=False)  # fmt: skip
    res = run_graph(cfg, model=model, log=lambda *_: None)
    names = node_names(res.graph)
    n_attn = int(res.graph.nodes.is_attn().sum())
    assert n_attn == res.replacement.n_attn_latents > 0
    assert sum(n.startswith("A2.f") for n in names) == n_attn
    assert sum(n.startswith("attn_err.L2@") for n in names) == 5  # one per position after BOS
    # each attention latent's error node is its attention SAE's, at its position
    err = latent_errors(res.graph)[res.graph.nodes.is_attn()]
    lat = [n for n in names if n.startswith("A2.f")]
    assert [names[e] for e in err.tolist()] == [f"attn_err.L2@{n.split('@')[1]}" for n in lat]
    store = results.ResultsStore(db, mode="read")
    (run,) = results.graph_runs(store)
    assert len(run.sae_ids) == 3 and run.config["attention_sae_layers"] == [2]
    stored = {n.node: n for n in results.graph_nodes(store, run.graph_id)}
    attn_nodes = [n for name, n in stored.items() if name.startswith(("A2.", "attn_err.L2"))]
    assert attn_nodes and all(n.hook == hook and n.kind in ("latent", "error") for n in attn_nodes)
    assert all(n.sae_id == run.sae_ids[-1] for n in attn_nodes)
    with pytest.raises(UserError, match="attention-SAE latents"):
        agreement(model, res.replacement, res.graph, n_nodes=2)
    with pytest.raises(UserError, match="read blocks.L.attn.hook_z"):
        run_graph(GraphConfig(transcoders=tcs, attention_saes=tcs[:1], prompt="Hi", progress=False),
                  model=model, log=lambda *_: None)  # fmt: skip


def test_the_graph_page_labels_attention_nodes():
    from saelab.app.attribution_graph import node_label
    from saelab.resultstore import GraphNodeRow

    def row(kind, hook):
        return GraphNodeRow(graph_id="g", node="n", kind=kind, layer=2, pos=1, feature=5,
                            sae_id="s", hook=hook, activation=1.0, influence=0.1, label=None)  # fmt: skip

    tokens = ["<bos>", " Paris"]
    z, mlp = "blocks.2.attn.hook_z", "blocks.2.ln2.hook_normalized"
    assert node_label(row("latent", z), tokens).startswith("attn L2 #5 @1")
    assert node_label(row("latent", mlp), tokens).startswith("L2 #5 @1")
    assert node_label(row("error", z), tokens).startswith("attn error L2 @1")
    assert node_label(row("error", "blocks.2.hook_mlp_out"), tokens).startswith("error L2 @1")
