"""Interventions: hooks always come off, generated tokens are steered with the KV cache on, and
each edit and metric against an independent reference."""

from __future__ import annotations

import math

import pytest
import torch

from saelab.steering.generate import Sampling, generate
from saelab.steering.harness import strength_for_kl
from saelab.steering.interventions import Add, Cap, Clamp, Steering, hook_count, hooked
from saelab.steering.metrics import kl_per_token, logit_lift

HOOK = "blocks.2.hook_resid_post"


def _prompt(model, text="The weather today is"):
    tok = model.tokenizer
    return torch.tensor([tok.bos_token_id] + tok.encode(text, add_special_tokens=False))


def test_an_exception_inside_leaves_the_model_unhooked(model):
    before = hook_count(model.bridge)
    steering = Steering(model.bridge, HOOK, [Add(torch.randn(model.d_model))])
    with pytest.raises(RuntimeError, match="boom"), hooked(steering):
        assert hook_count(model.bridge) == before + 1
        raise RuntimeError("boom")
    assert hook_count(model.bridge) == before
    assert not model.bridge.hook_dict[HOOK].fwd_hooks


@pytest.mark.filterwarnings("error::FutureWarning")  # the cache's second name stays quiet
def test_generated_tokens_are_steered_with_the_kv_cache(model):
    ids = _prompt(model)
    gen = torch.Generator().manual_seed(11)
    v = torch.randn(model.d_model, generator=gen)
    steering = Steering(model.bridge, HOOK, [Add(v / v.norm() * 40)], positions="generated")
    greedy = Sampling(max_new_tokens=6, temperature=0)
    clean = generate(model.bridge, ids, greedy)
    with hooked(steering):
        cached = generate(model.bridge, ids, greedy, steering)
        uncached = generate(
            model.bridge, ids, Sampling(max_new_tokens=6, temperature=0, use_cache=False), steering
        )
    # only generated positions are steered, so the first token is the clean one ...
    assert cached[0, 0] == clean[0, 0]
    # ... and later ones differ, exactly as without a cache
    assert (cached[0, 1:] != clean[0, 1:]).any()
    assert torch.equal(cached, uncached)
    # the clean generation itself does not depend on the cache
    assert torch.equal(clean, generate(model.bridge, ids, Sampling(6, 0, use_cache=False)))


def test_kl_against_a_hand_computation():
    # P = (1/2, 1/4, 1/4), Q = (1/4, 1/2, 1/4): KL(P‖Q) = ½ ln 2 + ¼ ln ½ + 0 = ¼ ln 2
    p = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)) + 3.0  # logits: any shift
    q = torch.log(torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)) - 1.0
    assert kl_per_token(p, q).item() == pytest.approx(0.25 * math.log(2), abs=1e-12)
    assert kl_per_token(p, p).item() == pytest.approx(0.0, abs=1e-12)
    # lift of token 1: ln ½ − ln ¼ = ln 2
    assert logit_lift(p, q, [1]) == pytest.approx(math.log(2), abs=1e-12)


def test_clamp_keeps_the_error_term_and_cap_caps_the_projection(steer_db_master):
    from saelab.sae.checkpoint import load_sae

    _, folder, _ = steer_db_master
    sae = load_sae(folder)
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(7, sae.d_in, generator=gen, dtype=torch.float32) * 3
    f = sae.encode(h).double()
    features, values = [3, 9], torch.tensor([2.5, 0.0])
    out = Clamp(sae, features, values).apply(h).double()
    f_new = f.clone()
    f_new[:, features] = values.double()
    w, b = sae.W_dec.detach().double(), sae.b_dec.detach().double()
    error_before = h.double() - (f @ w + b)
    error_after = out - (f_new @ w + b)
    assert torch.allclose(error_after, error_before, atol=1e-4)

    v = torch.randn(sae.d_in, generator=gen)
    v = v / v.norm()
    capped = Cap(v, 0.5).apply(h).double()
    proj = h.double() @ v.double()
    assert torch.allclose(capped @ v.double(), proj.clamp(max=0.5), atol=1e-5)
    rest = lambda x: x - (x @ v.double())[:, None] * v.double()  # noqa: E731
    assert torch.allclose(rest(capped), rest(h.double()), atol=1e-5)


def test_positions_mask_prompt_generated_and_never_bos(model):
    s = Steering(model.bridge, HOOK, [], positions="prompt", prompt_len=4)
    assert s.at(0).mask(6, "cpu").tolist() == [False, True, True, True, False, False]
    s.positions = "generated"
    assert s.at(0).mask(6, "cpu").tolist() == [False, False, False, False, True, True]
    assert s.at(5).mask(1, "cpu").tolist() == [True]
    s.positions = "all"
    assert s.at(0).mask(3, "cpu").tolist() == [False, True, True]


def test_bisection_finds_the_target_of_a_known_curve():
    calls = []

    def kl(s):
        calls.append(s)
        return 0.3 * s**2 + 0.05 * s**3

    s, value = strength_for_kl(kl, 1.0, rel_tol=0.01)
    assert abs(value - 1.0) <= 0.01 and abs(kl(s) - value) < 1e-12
    assert len(calls) <= 8
