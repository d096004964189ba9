"""The replacement model and the graph's adjacency, against the real model and against
finite-difference interventions in the frozen replacement model (float64)."""

from __future__ import annotations

import pytest
import torch

from saelab.base.errors import UserError
from tests.circuits.graph_fixtures import check_edges_by_finite_differences, random_transcoder

LAYERS = {1: False, 3: True, 4: False}  # layer -> skip transcoder


@pytest.fixture(scope="module")
def tokens(model):
    from saelab.activations.corpus import bos_token_id

    bos = bos_token_id(model.tokenizer)
    return [bos] + model.tokenizer.encode("The capital of France is", add_special_tokens=False), bos


@pytest.fixture(scope="module")
def rm64(model, tokens):
    from saelab.circuits.replacement import build_replacement

    tcs = {layer: random_transcoder(layer, skip=skip, seed=layer) for layer, skip in LAYERS.items()}
    return build_replacement(model, tokens[0], tcs, tokens[1], dtype=torch.float64)


def test_the_replacement_model_with_its_errors_reproduces_the_real_logits(model, tokens):
    """Frozen patterns and scales, transcoders + error nodes: the real logits to 1e-4 relative
    (float32, as the graph runs), and every transcoder's input to 1e-4 of its scale."""
    from saelab.circuits.replacement import build_replacement

    tcs = {layer: random_transcoder(layer, skip=skip, seed=layer) for layer, skip in LAYERS.items()}
    rm = build_replacement(model, tokens[0], tcs, tokens[1])
    inputs, final = rm.forward()
    real = rm.frozen.logits
    assert (rm.logits(final) - real).abs().max() / real.abs().max() < 1e-4
    x = rm.frozen.mlp_in
    assert (inputs - x).abs().max() / x.abs().max() < 1e-4
    # a layer without a transcoder: its whole MLP output is the error node
    err = rm.errors[rm.nodes.error_layer == 2]
    assert torch.equal(err, rm.frozen.mlp_out[2, 1:])
    # and no node ever sits at BOS
    assert int(rm.nodes.pos.min()) >= 1 and int(rm.nodes.error_pos.min()) == 1


def test_every_edge_equals_a_finite_difference_intervention(rm64):
    """The parity test: A[t, s] = (input_t(c_s·(1+ε)) − input_t(c_s)) / ε, each source node's
    contribution c_s scaled in the frozen replacement model, for targets at every transcoder
    layer and two logits; sources: every latent and embedding, every error node below the last
    transcoder layer and a seeded sample of the later ones (which reach only the logits)."""
    from saelab.circuits.graph_attribution import attribute, encoder_rows

    rm = rm64
    nodes = rm.nodes
    targets = torch.tensor([7042, 11])
    graph = attribute(rm, targets, torch.tensor([0.7, 0.1]), demean=True, progress=False)
    assert graph.n_latents == nodes.n_latents  # every row computed
    enc = encoder_rows(rm)
    dirs = rm.unembed_direction(targets, demean=True)

    def target_inputs(scale):
        inputs, final = rm.forward(scale)
        lat = (inputs[nodes.layer, nodes.pos] * enc).sum(-1)
        return torch.cat([lat, final[-1] @ dirs.t()])

    n_lat, n_err, n_src = nodes.n_latents, nodes.n_errors, nodes.n_sources
    low = (nodes.error_layer <= max(LAYERS)).nonzero().squeeze(1)
    high = (nodes.error_layer > max(LAYERS)).nonzero().squeeze(1)
    sample = high[torch.randperm(len(high), generator=torch.Generator().manual_seed(0))[:12]]
    sources = torch.cat([torch.arange(n_lat), n_lat + low, n_lat + sample,
                         torch.arange(n_lat + n_err, n_src)])  # fmt: skip
    rows, scale = check_edges_by_finite_differences(
        graph, target_inputs, sources, n_src, len(targets)
    )
    a = graph.adjacency
    # direct effects only: nothing feeds a latent from its own layer or above
    later = nodes.layer[None, :] >= nodes.layer[:, None]
    assert a[:n_lat, :n_lat][later].abs().max() == 0


def test_partial_rows_are_the_full_rows_of_the_chosen_latents(rm64):
    """With max_latents, the computed rows are the same numbers, for the latents chosen."""
    from saelab.circuits.graph_attribution import attribute

    targets, probs = torch.tensor([7042]), torch.tensor([0.7])
    full = attribute(rm64, targets, probs, progress=False)
    part = attribute(rm64, targets, probs, max_latents=10, batch_size=4, progress=False)
    assert part.n_latents == 10 and part.n_active == full.n_latents
    cols = torch.cat([part.selected, torch.arange(full.n_latents, full.size)])
    rows = torch.cat([part.selected, torch.tensor([full.size - 1])])
    sub = full.adjacency[rows][:, cols]
    keep = torch.cat([torch.arange(10), torch.tensor([part.size - 1])])
    assert torch.allclose(part.adjacency[keep], sub, rtol=0, atol=1e-12)


def test_only_transcoders_of_the_traced_pair_are_accepted(model):
    from saelab.circuits.replacement import transcoder_layer
    from saelab.sae.registry import build_sae, make_config

    sae = build_sae(make_config("topk", d_sae=32, k=4), 576)
    with pytest.raises(UserError, match="transcoders from blocks.L.ln2.hook_normalized"):
        transcoder_layer(sae)
    tc = random_transcoder(2)
    tc.cfg.target_hook = "blocks.3.hook_mlp_out"
    with pytest.raises(UserError, match="reads layer 2 and writes layer 3"):
        transcoder_layer(tc)
