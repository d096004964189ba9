"""A BatchTopK training step against a dense float64 definition.

The batch-wide selection pads rows to the longest row's count, so latent 0 sits in every
padded slot with a zero mask; the step's loss and every gradient must still be those of
"keep the k·N largest pre-activations of the batch" plus AuxK on the dead latents.
"""

from __future__ import annotations

import pytest
import torch

from saelab.sae import build_sae, make_config
from saelab.sae.base import StepContext


@pytest.mark.parametrize("d_sae", [32, 512], ids=["dense-path", "sparse-path"])
def test_batchtopk_step_matches_a_dense_float64_definition(d_sae):
    g = torch.Generator().manual_seed(1234 + d_sae)
    sae = build_sae(make_config("batchtopk", d_sae=d_sae, d_in=16, k=4.0, aux_k=8, seed=3))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(64, 16, generator=g)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::7] = True
    out = sae.training_forward(x, StepContext(dead_mask=dead))
    out.loss.backward()

    ref = {n: p.detach().double().requires_grad_() for n, p in sae.named_parameters()}
    xd = x.double()
    pre = (xd - ref["b_dec"]) @ ref["encoder_weight"].t() + ref["b_enc"]
    kept = pre.detach().flatten().topk(4 * 64).values[-1]
    x_hat = (pre.relu() * (pre.detach() >= kept)) @ ref["W_dec"] + ref["b_dec"]
    mse = (x_hat - xd).pow(2).sum(-1).mean()
    cols = dead.nonzero().squeeze(1)
    pre_dead = pre[:, cols]
    top = torch.zeros_like(pre_dead).scatter(
        1, pre_dead.detach().topk(min(8, len(cols)), dim=1).indices, 1.0
    )
    e_hat = (pre_dead.relu() * top) @ ref["W_dec"][cols]
    aux = min(len(cols) / 8, 1.0) * (e_hat - (xd - x_hat).detach()).pow(2).sum(-1).mean()
    (mse + sae.cfg.aux_coefficient * aux).backward()

    torch.testing.assert_close(out.terms["mse"].double(), mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["aux_k"].double(), aux, rtol=1e-5, atol=1e-6)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad.double(), ref[name].grad, rtol=1e-4, atol=1e-6)
    assert (out.code.l0() != 4).any(), "rows with other counts than k: padding exercised"
