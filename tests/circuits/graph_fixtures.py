"""Seeded random transcoders for the graph tests (exactness must hold for any transcoder)."""

from __future__ import annotations

import torch

PROMPT = "The capital of France is Paris, and"


def random_transcoder(layer: int, d: int = 576, d_sae: int = 64, k: int = 4, skip=False, seed=0):
    """A TopK transcoder for `layer` with seeded random weights and biases."""
    from saelab.sae.registry import build_sae, make_config

    cfg = make_config(
        "transcoder", d_sae=d_sae, d_in=d, d_out=d, k=k, skip=skip, seed=seed,
        target_hook=f"blocks.{layer}.hook_mlp_out",
        input_hook=f"blocks.{layer}.ln2.hook_normalized",
    )  # fmt: skip
    tc = build_sae(cfg)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        tc.b_enc.copy_(0.2 * torch.randn(d_sae, generator=g))
        tc.b_dec.copy_(0.1 * torch.randn(d, generator=g))
        if skip:
            tc.W_skip.copy_(0.02 * torch.randn(d, d, generator=g))
    return tc.eval()


def save_transcoders(out, layers=(1, 3)) -> list[str]:
    """Random transcoders saved as folders (what `saelab graph` reads)."""
    from saelab.sae.checkpoint import save_sae

    folders = []
    for i, layer in enumerate(layers):
        tc = random_transcoder(layer, seed=i, skip=i == 1)
        hook = f"blocks.{layer}.ln2.hook_normalized"
        folders.append(str(save_sae(tc, out / f"tc-{layer}", meta={"hook_name": hook})))
    return folders


def check_edges_by_finite_differences(graph, target_inputs, sources, n_sources, n_targets):
    """The parity check every graph variant shares: each edge into every latent and target
    logit, from each of `sources`, equals a finite difference of `target_inputs` (the frozen
    float64 replacement model's latent and logit inputs, given a scale per source node) when
    that source's contribution is scaled by 1 + 1e-3, to 1e-8 of the largest edge; and each
    target's edges plus its constant part are its whole input. Returns
    the checked rows of the adjacency and the largest edge."""
    n_latents = graph.nodes.n_latents
    ones = torch.ones(n_sources, dtype=torch.float64)
    base = target_inputs(ones)
    eps = 1e-3
    fd = torch.empty(n_latents + n_targets, len(sources), dtype=torch.float64)
    for j, s in enumerate(sources.tolist()):
        up = ones.clone()
        up[s] += eps
        fd[:, j] = (target_inputs(up) - base) / eps
    rows = torch.cat([torch.arange(n_latents), torch.arange(graph.size - n_targets, graph.size)])
    got = graph.adjacency[rows][:, sources]
    scale = got.abs().max()
    assert scale > 0.1
    assert (got - fd).abs().max() <= 1e-8 * scale
    # the edges into a target plus its constant part (every node at 0) are its whole input
    total = base - target_inputs(torch.zeros_like(ones))
    assert torch.allclose(
        graph.adjacency[rows, :n_sources].sum(1), total, rtol=0, atol=1e-9 * scale
    )
    return rows, scale
