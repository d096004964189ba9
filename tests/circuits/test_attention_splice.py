"""An attention SAE spliced at `blocks.L.attn.hook_z` (the heads' outputs, before W_O): the
spliced model computes the original logits, its edits really reach the residual stream through
W_O, and AtP on its latents equals exact patching for a metric linear in them."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.attribution import (
    LogitDiff,
    Readout,
    attribute,
    exact_effect,
    node_delta,
    patch_sides,
)
from saelab.circuits.exact import exact_node_effects
from saelab.circuits.nodes import ERROR, NodeKey, aggregate
from saelab.circuits.splice import SplicedModel, hook_label, hook_order
from tests.circuits.conftest import random_sae

Z = "blocks.2.attn.hook_z"
HOOKS = [Z, "blocks.2.hook_mlp_out", "blocks.3.hook_resid_post"]


@pytest.fixture(scope="module")
def attn_spliced(model):
    saes = {h: random_sae(576, 128, 6, seed=10 + i) for i, h in enumerate(HOOKS)}
    return SplicedModel(model, saes)


def test_hook_z_has_its_place_before_attn_out():
    assert (
        hook_order(Z) < hook_order("blocks.2.hook_attn_out") < hook_order("blocks.2.hook_mlp_out")
    )
    assert hook_order("blocks.1.hook_resid_post") < hook_order(Z)
    assert hook_label(Z) == "z_2"


def test_spliced_logits_equal_the_original(model, attn_spliced, sva_small):
    tokens = torch.cat([sva_small.clean, sva_small.patch])
    with torch.no_grad():
        original = model.bridge(tokens, return_type="logits")
    logits, states, _ = attn_spliced.run_spliced(tokens)
    assert list(states) == HOOKS  # computation order
    z = states[Z]
    assert z.x.shape == (*tokens.shape, 576)  # the heads concatenated
    assert z.err.norm() > 0.1 * z.x.norm()
    assert (logits - original).abs().max().item() < 1e-3

    # the splice reaches the model: x̂ alone (error node dropped) changes the logits
    def recon_only(x):
        return attn_spliced.encode(Z, x)[2]

    with torch.no_grad():
        changed, _ = attn_spliced.forward(tokens, {Z: recon_only})
    assert (changed - original).abs().max().item() > 1e-2


def test_z_equals_the_heads_before_w_o(model, attn_spliced, sva_small):
    # hook_attn_out = z (heads concatenated) @ W_O^T: what the splice sees is what W_O reads
    _, captured = attn_spliced.forward(sva_small.clean, capture=[Z, "blocks.2.hook_attn_out"])
    w_o = model.bridge.blocks[2].attn.o.weight  # [d_model, n_heads * d_head]
    expect = captured[Z] @ w_o.T
    torch.testing.assert_close(captured["blocks.2.hook_attn_out"], expect, rtol=1e-4, atol=1e-4)


def test_gradients_reach_attention_latents(attn_spliced, sva_small):
    metric = LogitDiff(sva_small.correct, sva_small.wrong)
    logits, states, _ = attn_spliced.run_spliced(sva_small.clean, grads=True)
    metric(logits, {}).sum().backward()
    st = states[Z]
    assert st.vals.grad is not None and st.vals.grad.abs().sum() > 0
    g = st.err.grad.reshape(-1, 576)
    expect = torch.einsum("nd,nkd->nk", g, attn_spliced.saes[Z].W_dec[st.idx])
    torch.testing.assert_close(st.vals.grad, expect, rtol=1e-4, atol=1e-6)


def test_atp_on_attention_latents_equals_exact_patching(attn_spliced, sva_small):
    # hook_attn_out is linear in z at each position (W_O, no bias), so a readout of it at the
    # last position is linear in every node at hook_z: AtP must equal exact patching there.
    g = torch.Generator().manual_seed(5)
    metric = Readout("blocks.2.hook_attn_out", torch.randn(576, generator=g))
    tokens = sva_small.clean
    sides = patch_sides(attn_spliced, sva_small.patch, "patch")
    effects, base = attribute(attn_spliced, tokens, metric, sides, "atp")
    _, states, _ = attn_spliced.run_spliced(tokens)
    nodes = [n for n in aggregate({Z: effects[Z]}, per_position=True) if n.key.hook == Z]
    feats = [n for n in nodes if n.key.feature != ERROR][:4]
    errs = [n for n in nodes if n.key.feature == ERROR][:1]
    assert len(feats) == 4 and errs
    for node in feats + errs:
        k = node.key
        feature = None if k.feature == ERROR else k.feature
        delta = node_delta(attn_spliced, Z, states[Z], sides[Z], feature, k.pos)
        exact = exact_effect(attn_spliced, tokens, metric, Z, delta, base).mean()
        assert abs(node.effect) > 1e-3
        assert node.effect == pytest.approx(float(exact), rel=1e-4, abs=1e-4)


def test_batched_exact_patching_of_attention_latents(attn_spliced, sva_small):
    # the batched exact re-scoring (circuits/exact.py) builds its deltas at hook_z's width and
    # agrees with one-node-at-a-time patching on the real logit difference
    metric = LogitDiff(sva_small.correct, sva_small.wrong)
    tokens = sva_small.clean
    sides = patch_sides(attn_spliced, sva_small.patch, "patch")
    effects, base = attribute(attn_spliced, tokens, metric, sides, "atp")
    _, states, _ = attn_spliced.run_spliced(tokens)
    nodes = [n for n in aggregate({Z: effects[Z]}, per_position=True) if n.key.hook == Z]
    keys = [n.key for n in nodes if n.key.feature != ERROR][:3]
    batched = exact_node_effects(attn_spliced, tokens, metric, states, sides, keys)
    for j, k in enumerate(keys):
        delta = node_delta(attn_spliced, Z, states[Z], sides[Z], k.feature, k.pos)
        single = exact_effect(attn_spliced, tokens, metric, Z, delta, base)
        torch.testing.assert_close(batched[j], single, rtol=1e-4, atol=1e-4)
    assert isinstance(keys[0], NodeKey)


def test_edges_from_attention_latents_batched_equal_looped(attn_spliced, sva_small):
    from saelab.circuits.edges import edge_effects
    from tests.circuits.test_edges import _setup

    tokens, states, grads, sides, kept = _setup(attn_spliced, sva_small, per_position=True)
    batched = edge_effects(attn_spliced, tokens, states, grads, sides, kept, batch=16)
    looped = edge_effects(attn_spliced, tokens, states, grads, sides, kept, batch=16, batched=False)
    a = {(e.up, e.down): e.effect for e in batched}
    b = {(e.up, e.down): e.effect for e in looped}
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) / (abs(b[k]) + 1e-6) for k in a) < 1e-3
    from_z = [e for e in batched if e.up.hook == Z and e.effect != 0]
    assert {e.down.hook for e in from_z} == {"blocks.2.hook_mlp_out", "blocks.3.hook_resid_post"}
