"""Fixtures for the circuit tests: seeded random SAEs (exactness) and a small real task."""

from __future__ import annotations

import pytest
import torch

RANDOM_HOOKS = [
    "blocks.1.hook_resid_post",
    "blocks.2.hook_attn_out",
    "blocks.2.hook_mlp_out",
    "blocks.3.hook_resid_post",
]


def random_sae(d_in: int, d_sae: int, k: int, seed: int):
    """A TopK SAE with seeded random weights and biases (its error node is large: fine for
    exactness tests, which must hold for any SAE)."""
    from sae.registry import build_sae, make_config

    sae = build_sae(make_config("topk", d_sae=d_sae, k=k, seed=seed), d_in)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        sae.encoder_weight.add_(0.3 * torch.randn(sae.encoder_weight.shape, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    return sae.eval()


@pytest.fixture(scope="module")
def random_spliced(model):
    from circuits.splice import SplicedModel

    saes = {h: random_sae(model.d_model, 128, 6, seed=i) for i, h in enumerate(RANDOM_HOOKS)}
    return SplicedModel(model, saes)


@pytest.fixture(scope="module")
def sva_small(model):
    from activations.corpus import bos_token_id
    from circuits.tasks import load_task

    return load_task("sva-pp", model.tokenizer, bos_token_id(model.tokenizer), n=6, seed=3)
