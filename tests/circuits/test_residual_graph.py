"""The residual-SAE graph (circuits/residual_graph.py): its model reproduces the real logits,
and every edge equals a central finite difference of the frozen model with its MLPs left
nonlinear (float64): the edges are the first-order effects they claim to be."""

from __future__ import annotations

import pytest
import torch

from saelab.base.errors import UserError

LAYERS = (1, 3)


def random_sae(layer: int, d: int = 576, d_sae: int = 64, k: int = 4, seed: int = 0):
    """A seeded random TopK SAE on blocks.L.hook_resid_post."""
    from saelab.sae.registry import build_sae, make_config

    sae = build_sae(make_config("topk", d_sae=d_sae, d_in=d, k=k, seed=seed))
    g = torch.Generator().manual_seed(200 + seed)
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=g))
    return sae.eval()


@pytest.fixture(scope="module")
def rgm(model):
    from saelab.activations.corpus import bos_token_id
    from saelab.circuits.residual_graph import build_residual_graph_model

    bos = bos_token_id(model.tokenizer)
    tokens = [bos] + model.tokenizer.encode("The capital of France is", add_special_tokens=False)
    saes = {layer: random_sae(layer, seed=layer) for layer in LAYERS}
    return build_residual_graph_model(model, tokens, saes, bos, dtype=torch.float64)


def test_the_model_reproduces_the_real_logits_and_residuals(rgm):
    read, final = rgm.forward()
    logits = rgm.attn.logits(final)
    real = rgm.frozen.logits
    assert (logits - real).abs().max() / real.abs().max() < 1e-4
    for layer in LAYERS:
        assert torch.allclose(read[layer], rgm.resid[layer], atol=1e-4 * rgm.resid.abs().max())
    # no node at BOS; one error node per spliced layer and later position
    assert int(rgm.nodes.pos.min()) == 1
    assert rgm.nodes.n_errors == len(LAYERS) * (rgm.nodes.n_pos - 1)


def test_every_edge_equals_a_finite_difference_of_the_nonlinear_frozen_model(rgm):
    from saelab.circuits.residual_graph import attribute_residual

    targets = torch.tensor([7042])
    graph = attribute_residual(rgm, targets, torch.tensor([1.0]), demean=True)
    nodes, a = rgm.nodes, graph.adjacency
    n_src = nodes.n_sources
    enc = rgm.encoder_rows()
    direction = rgm.unembed_direction(targets, True)[0]

    def target_inputs(scale):
        read, final = rgm.forward(scale)
        lat = torch.stack([read[int(ly)][int(p)] for ly, p in zip(nodes.layer, nodes.pos)])
        return torch.cat([(lat * enc).sum(-1), (final[-1] @ direction)[None]])

    # a seeded sample of sources of every kind: latents and errors at both layers, embeddings
    g = torch.Generator().manual_seed(0)
    lat1 = (nodes.layer == 1).nonzero().squeeze(1)
    lat3 = (nodes.layer == 3).nonzero().squeeze(1)
    n_lat, n_err = nodes.n_latents, nodes.n_errors
    pick = lambda idx, n: idx[torch.randperm(len(idx), generator=g)[:n]]  # noqa: E731
    sources = torch.cat([
        pick(lat1, 3), pick(lat3, 3), n_lat + pick(torch.arange(n_err // 2), 1),
        n_lat + pick(torch.arange(n_err // 2, n_err), 1), n_lat + n_err + torch.tensor([0, 3]),
    ]).tolist()  # fmt: skip
    eps = 1e-4
    fd = torch.zeros(nodes.n_latents + 1, len(sources), dtype=torch.float64)
    for j, s in enumerate(sources):
        up, down = torch.ones(n_src, dtype=torch.float64), torch.ones(n_src, dtype=torch.float64)
        up[s], down[s] = 1 + eps, 1 - eps
        fd[:, j] = (target_inputs(up) - target_inputs(down)) / (2 * eps)
    edges = torch.cat([a[: nodes.n_latents, :n_src], a[-1:, :n_src]])
    scale = edges[:, sources].abs().max()
    assert scale > 0
    # central differences of a model whose MLPs are nonlinear: O(eps^2) apart (measured 1.3e-6)
    assert (edges[:, sources] - fd).abs().max() < 1e-5 * scale
    # the structure: layer-1 sources reach only layer-3 latents, and the logit only layer 3
    first = (nodes.layer == 1).nonzero().squeeze(1)
    assert edges[-1, first].abs().max() == 0
    assert (edges[: nodes.n_latents][:, first].abs().sum() > 0) and edges.abs().sum(1).gt(0).all()


def test_a_non_residual_hook_is_a_one_line_error():
    from saelab.circuits.residual_graph import residual_layer

    assert residual_layer("blocks.12.hook_resid_post") == 12
    with pytest.raises(UserError, match="hook_resid_post"):
        residual_layer("blocks.3.ln2.hook_normalized")
