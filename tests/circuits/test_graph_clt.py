"""Attribution graphs with a cross-layer transcoder (CLT): its latents write to every later
layer's MLP output. The frozen replacement model against the real model, every edge against a
finite-difference intervention (float64), the per-layer special case, and `run_graph`."""

from __future__ import annotations

import pytest
import torch

from saelab.base.errors import UserError
from tests.circuits.graph_fixtures import check_edges_by_finite_differences, random_transcoder

CLT_LAYERS = (1, 2, 3, 4)
TC_LAYER = 6  # a per-layer skip transcoder beside the CLT; layer 5 has none
IN = "blocks.{}.ln2.hook_normalized"


def random_clt(d_latent: int = 24, k: int = 4, seed: int = 3, zero_cross: bool = False):
    """A TopK CLT over CLT_LAYERS with seeded random weights and biases."""
    from saelab.sae.registry import build_sae, make_config

    cfg = make_config(
        "clt", d_sae=d_latent, d_in=576, d_out=576, k=k, seed=seed,
        input_hooks=[f"blocks.{layer}.ln2.hook_normalized" for layer in CLT_LAYERS],
        target_hooks=[f"blocks.{layer}.hook_mlp_out" for layer in CLT_LAYERS],
    )  # fmt: skip
    clt = build_sae(cfg)
    g = torch.Generator().manual_seed(200 + seed)
    with torch.no_grad():
        clt.b_enc.copy_(0.2 * torch.randn(clt.b_enc.shape, generator=g))
        clt.b_dec.copy_(0.1 * torch.randn(clt.b_dec.shape, generator=g))
        for w in clt.W_dec:  # writes of the size of a transcoder's
            w.mul_(2.0)
            if zero_cross:
                w[:, 1:] = 0
    return clt.eval()


def per_layer_equivalents(clt) -> dict[int, torch.nn.Module]:
    """One transcoder per layer with the CLT's encoder, own-layer decoder and bias."""
    out = {}
    for layer in clt.layers:
        tc = random_transcoder(layer, d_sae=clt.d_latent, k=int(clt.cfg.k))
        with torch.no_grad():
            tc.W_enc.copy_(clt.encoder(layer))
            tc.b_enc.copy_(clt.b_enc[clt.position(layer)])
            tc.W_dec.copy_(clt.decoder(layer, layer))
            tc.b_dec.copy_(clt.bias(layer))
        out[layer] = tc
    return out


@pytest.fixture(scope="module")
def tokens(model):
    from saelab.activations.corpus import bos_token_id

    bos = bos_token_id(model.tokenizer)
    return [bos] + model.tokenizer.encode("The capital of France is", add_special_tokens=False), bos


def dictionaries(clt):
    found = {layer: clt for layer in CLT_LAYERS}
    found[TC_LAYER] = random_transcoder(TC_LAYER, skip=True, seed=TC_LAYER)
    return found


def test_the_replacement_model_with_a_clt_reproduces_the_real_logits(model, tokens):
    """CLT latents and error nodes (mlp_out − b_dec − every earlier layer's writes) sum to the
    real MLP outputs: the real logits to 1e-4 relative (float32), and cross-layer writes exist."""
    from saelab.circuits.replacement import build_replacement

    clt = random_clt()
    rm = build_replacement(model, tokens[0], dictionaries(clt), tokens[1])
    inputs, final = rm.forward()
    real = rm.frozen.logits
    assert (rm.logits(final) - real).abs().max() / real.abs().max() < 1e-4
    x = rm.frozen.mlp_in
    assert (inputs - x).abs().max() / x.abs().max() < 1e-4
    assert set(rm.nodes.layer.tolist()) == {*CLT_LAYERS, TC_LAYER}
    # every CLT latent of layer l writes to each later layer of the range (and nowhere else)
    n_clt = {layer: int((rm.nodes.layer == layer).sum()) for layer in CLT_LAYERS}
    assert len(rm.cross) == sum(n * (4 - p - 1) for p, n in enumerate(n_clt.values()))
    src = rm.nodes.layer[rm.cross_latent]
    assert bool((rm.cross_layer > src).all()) and int(rm.cross_layer.max()) == 4
    # an error node of the range, by hand: mlp_out − b_dec − Σ_{l <= 3} f_l W_dec[l -> 3]
    p3 = (rm.nodes.error_layer == 3).nonzero().squeeze(1)
    t = rm.nodes.error_pos[p3]
    by_hand = rm.frozen.mlp_out[3, t] - clt.bias(3)
    for layer in (1, 2, 3):
        f = clt.encode_layer(layer, rm.frozen.mlp_in[layer, t])
        by_hand = by_hand - clt.decode_to(layer, 3, f)
    torch.testing.assert_close(rm.errors[p3], by_hand, rtol=1e-5, atol=1e-5)
    # layer 5 has no dictionary: its whole MLP output is the error node
    assert torch.equal(rm.errors[rm.nodes.error_layer == 5], rm.frozen.mlp_out[5, 1:])


def test_every_clt_edge_equals_a_finite_difference_intervention(model, tokens):
    """The parity test with a random CLT over 4 layers (and a skip transcoder above it), in
    float64: A[t, s] = (input_t(c_s·(1+ε)) − input_t(c_s)) / ε, scaling every write of
    source s (a CLT latent's writes to all later layers together)."""
    from saelab.circuits.graph_attribution import attribute, encoder_rows
    from saelab.circuits.replacement import build_replacement

    rm = build_replacement(model, tokens[0], dictionaries(random_clt()), tokens[1], torch.float64)
    nodes = rm.nodes
    targets = torch.tensor([7042, 11])
    graph = attribute(rm, targets, torch.tensor([0.7, 0.1]), demean=True, progress=False)
    enc = encoder_rows(rm)
    dirs = rm.unembed_direction(targets, demean=True)

    def target_inputs(scale):
        inputs, final = rm.forward(scale)
        lat = (inputs[nodes.layer, nodes.pos] * enc).sum(-1)
        return torch.cat([lat, final[-1] @ dirs.t()])

    n_lat, n_err, n_src = nodes.n_latents, nodes.n_errors, nodes.n_sources
    low = (nodes.error_layer <= TC_LAYER).nonzero().squeeze(1)
    sources = torch.cat([torch.arange(n_lat), n_lat + low, torch.arange(n_lat + n_err, n_src)])
    rows, scale = check_edges_by_finite_differences(
        graph, target_inputs, sources, n_src, len(targets)
    )
    a = graph.adjacency
    assert len(rm.cross) > 0  # the parity covers cross-layer writes
    # direct effects only: nothing feeds a latent from its own layer or above
    later = nodes.layer[None, :] >= nodes.layer[:, None]
    assert a[:n_lat, :n_lat][later].abs().max() == 0


def test_a_clt_without_cross_layer_decoders_is_the_per_layer_transcoders(model, tokens):
    """W_dec[l -> l'] = 0 for l' > l: the same nodes, errors and adjacency as per-layer
    transcoders with the CLT's own-layer weights."""
    from saelab.circuits.graph_attribution import attribute
    from saelab.circuits.replacement import build_replacement

    clt = random_clt(zero_cross=True)
    args = (torch.tensor([7042]), torch.tensor([0.7]))
    graphs = []
    for dicts in ({layer: clt for layer in CLT_LAYERS}, per_layer_equivalents(clt)):
        rm = build_replacement(model, tokens[0], dicts, tokens[1], torch.float64)
        graphs.append((rm, attribute(rm, *args, progress=False)))
    (rm_a, a), (rm_b, b) = graphs
    for name in ("layer", "pos", "feature", "activation"):
        assert torch.equal(getattr(rm_a.nodes, name), getattr(rm_b.nodes, name)), name
    assert a.n_latents > 20
    torch.testing.assert_close(rm_a.errors, rm_b.errors, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.adjacency, b.adjacency, rtol=0, atol=1e-10)
    assert len(rm_a.cross) > 0 and rm_a.cross.abs().max() == 0  # written, as zeros


def test_with_everything_frozen_the_real_model_moves_as_the_clt_graph_predicts(model, tokens):
    """graph_check with a CLT: scaling a latent's contribution edits every layer it writes to,
    and with everything the graph freezes held in the real model, the logit moves by exactly
    the graph's total effect."""
    from saelab.circuits.graph_attribution import attribute
    from saelab.circuits.graph_check import agreement
    from saelab.circuits.replacement import build_replacement

    rm = build_replacement(model, tokens[0], dictionaries(random_clt()), tokens[1])
    top = int(rm.frozen.logits[-1].argmax())
    graph = attribute(rm, torch.tensor([top]), torch.tensor([0.7]), progress=False)
    ag = agreement(model, rm, graph, n_nodes=16, factor=0.0, freeze="all")
    pred = torch.tensor([c.predicted for c in ag.checks])
    real = torch.tensor([c.measured for c in ag.checks])
    assert any(c.layer < 4 for c in ag.checks)  # latents with cross-layer writes among them
    assert (pred - real).abs().max() <= 1e-3 * pred.abs().max() + 1e-4
    assert ag.pearson > 0.9999


def test_run_graph_with_a_clt_and_a_transcoder(model, tokens, tmp_path):
    """`saelab graph` with a CLT folder and a per-layer transcoder folder: one record per
    dictionary, CLT latents named by their source layer, a layer given twice refused."""
    from saelab import resultstore as results
    from saelab.circuits.graph_run import GraphConfig, run_graph
    from saelab.sae.checkpoint import save_sae

    clt = random_clt()
    clt_dir = save_sae(clt, tmp_path / "clt", meta={"hook_name": clt.input_hooks[0]})
    tc = random_transcoder(TC_LAYER, skip=True, seed=TC_LAYER)
    tc_dir = save_sae(tc, tmp_path / "tc", meta={"hook_name": IN.format(TC_LAYER)})
    db = str(tmp_path / "r.duckdb")
    cfg = GraphConfig(transcoders=[str(clt_dir), str(tc_dir)], prompt="The capital of France is",
                      db=db, node_budget=400, edge_budget=3000, node_threshold=1.0, progress=False)  # fmt: skip
    res = run_graph(cfg, model=model, log=lambda *_: None)
    store = results.ResultsStore(db, mode="read")
    (run,) = results.graph_runs(store)
    assert len(run.sae_ids) == 2 and run.config["layers"] == [*CLT_LAYERS, TC_LAYER]
    assert 0 < run.replacement_score <= 1 and 0 < run.completeness_score <= 1
    nodes = results.graph_nodes(store, run.graph_id)
    clt_nodes = [n for n in nodes if n.kind == "latent" and n.layer in CLT_LAYERS]
    assert clt_nodes and {n.sae_id for n in clt_nodes} == {run.sae_ids[0]}
    assert all(n.node.startswith(f"L{n.layer}.f") for n in clt_nodes)
    assert res.replacement.cross.shape[0] > 0
    twice = GraphConfig(transcoders=[str(clt_dir), *[str(f) for f in [tmp_path / "tc3"]]],
                        prompt="x", progress=False)  # fmt: skip
    save_sae(
        random_transcoder(3), tmp_path / "tc3", meta={"hook_name": "blocks.3.ln2.hook_normalized"}
    )
    with pytest.raises(UserError, match="two transcoders for layer 3"):
        run_graph(twice, model=model, log=lambda *_: None)
