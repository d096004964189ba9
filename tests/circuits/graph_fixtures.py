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
