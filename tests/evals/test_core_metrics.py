"""Core metrics pinned against hand-computed references (the definitions in evaluation/core.py)."""

from __future__ import annotations

import math

import pytest
import torch

from saelab.evaluation.core.reconstruction import ReconstructionStats
from saelab.evaluation.loss.splice import loss_stats


def stats_of(x, x_hat, f, batch_size=None):
    stats = ReconstructionStats(d_in=x.shape[1], d_sae=f.shape[1])
    step = batch_size or len(x)
    for i in range(0, len(x), step):
        fb = f[i : i + step]
        stats.update(x[i : i + step], x_hat[i : i + step], (fb > 0).sum(1), (fb > 0).sum(0))
    return stats.metrics()


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_hand_worked_example():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0]])
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[1.0, 0, 0], [0.5, 2.0, 0], [0, 0, 0]])
    m = stats_of(x, x_hat, f)
    # errors: (0,1), (1,0), (-1,0) -> squared norms 1, 1, 1
    assert m["mse"] == pytest.approx(1.0)
    # mean x = (1, 1); ||x - mean||^2 = 1 + 5 + 4 = 10 -> EV = 1 - 3/10
    assert m["explained_variance"] == pytest.approx(0.7) and m["fvu"] == pytest.approx(0.3)
    assert m["l0"] == pytest.approx(1.0)  # 1 + 2 + 0 active over 3 tokens
    cos = [3 / (math.sqrt(5) * math.sqrt(2)), 1.0, 1 / math.sqrt(2)]
    assert m["cosine"] == pytest.approx(sum(cos) / 3)
    assert m["l2_ratio"] == pytest.approx(
        (math.sqrt(2) / math.sqrt(5) + 2 / 3 + 1 / math.sqrt(2)) / 3
    )
    assert m["relative_reconstruction_bias"] == pytest.approx((2 + 4 + 1) / (3 + 6 + 1))
    assert m["dead_fraction"] == pytest.approx(1 / 3)  # latent 2 never fires
    assert m["dense_fraction"] == pytest.approx(2 / 3)  # densities 2/3, 1/3 > 0.1


def test_predicting_the_mean_gives_zero_and_exact_gives_one():
    x = rand(500, 16, seed=1) * 3 + 5
    f = rand(500, 32, seed=2).relu()
    mean = x.mean(0, keepdim=True).expand_as(x)
    assert stats_of(x, mean, f)["explained_variance"] == pytest.approx(0.0, abs=1e-12)
    assert stats_of(x, x.clone(), f)["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert stats_of(x, x.clone(), f)["mse"] == 0.0


def test_metrics_do_not_depend_on_batch_size():
    x, x_hat = rand(999, 24, seed=3), rand(999, 24, seed=4)
    f = rand(999, 40, seed=5).relu()
    whole = stats_of(x, x_hat, f)
    for bs in (1, 7, 128):
        parts = stats_of(x, x_hat, f, batch_size=bs)
        for key, value in whole.items():
            assert parts[key] == pytest.approx(value, rel=1e-10), key
    # against a direct float64 computation
    ref_mse = (x - x_hat).pow(2).sum(1).mean().item()
    ref_ev = 1 - (x - x_hat).pow(2).sum().item() / (x - x.mean(0)).pow(2).sum().item()
    assert whole["mse"] == pytest.approx(ref_mse) and whole["explained_variance"] == pytest.approx(
        ref_ev
    )


HOOK = "blocks.2.hook_resid_post"


def _tokens_and_mask(small_store):
    from saelab.activations.store import ActivationStore

    store = ActivationStore(small_store)
    tokens = torch.from_numpy(store.read_tokens(0)[:4]).long()
    mask = torch.from_numpy(store.token_mask(0)[:4])
    return tokens, mask


def test_ce_score_identity_is_one_and_zero_is_zero(model, small_store):
    tokens, mask = _tokens_and_mask(small_store)
    ident = loss_stats(model.bridge, HOOK, lambda x: x, tokens, mask, batch_size=2).metrics()
    assert ident["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert ident["kl_sae"] == pytest.approx(0.0, abs=1e-5) and ident["delta_loss"] == pytest.approx(
        0.0, abs=1e-4
    )
    zero = loss_stats(
        model.bridge, HOOK, lambda x: torch.zeros_like(x), tokens, mask, batch_size=4
    ).metrics()
    assert zero["ce_loss_score"] == pytest.approx(0.0, abs=1e-9) and zero[
        "kl_score"
    ] == pytest.approx(0.0, abs=1e-9)
    assert zero["ce_zero"] > zero["ce_clean"] + 0.5  # zeroing the residual stream hurts a lot
    # a half-way reconstruction lands strictly between
    half = loss_stats(model.bridge, HOOK, lambda x: 0.5 * x, tokens, mask).metrics()
    assert 0 < half["ce_loss_score"] < 1 and half["kl_sae"] > 0


def test_ce_clean_matches_a_direct_computation(model, small_store):
    tokens, mask = _tokens_and_mask(small_store)
    m = loss_stats(model.bridge, HOOK, lambda x: x, tokens, mask).metrics()
    with torch.no_grad():
        logits = model.bridge(tokens, return_type="logits").double()
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )
    assert m["ce_clean"] == pytest.approx(ref.item(), rel=1e-6)
