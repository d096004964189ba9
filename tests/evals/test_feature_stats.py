"""Feature statistics and dashboard rows against a brute-force dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.activations.store import ActivationStore
from saelab.evaluation.features import FeatureStatsConfig, dashboards
from saelab.evaluation.features.logits import logit_effects
from saelab.evaluation.features.stats import HIST_EDGES, feature_stats

HOOK = "blocks.2.hook_resid_post"


class ReluEncoder:
    """A minimal SAE stand-in: f = ReLU(x W + b), sparse enough to have rare latents."""

    def __init__(self, d_in: int, d_sae: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d_in, self.d_sae = d_in, d_sae
        self.W = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
        self.b = -2.0 - torch.rand(d_sae, generator=g) * 2  # most latents rarely fire
        self.W_dec = torch.randn(d_sae, d_in, generator=g)

    def encode(self, x):
        return torch.relu(x.float() @ self.W + self.b)


@pytest.fixture(scope="module")
def reference(small_store):
    store = ActivationStore(small_store)
    enc = ReluEncoder(576, 48, seed=int(np.random.SeedSequence().entropy % 2**31))
    acts = torch.cat(
        [store.read_acts(HOOK, c).float() for c in store.committed_chunks()]
    )  # [S, T, d]
    mask = torch.from_numpy(np.concatenate([store.token_mask(c) for c in store.committed_chunks()]))
    f = enc.encode(acts.reshape(-1, 576)).reshape(*acts.shape[:2], -1)
    f[~mask] = 0
    cfg = FeatureStatsConfig(
        n_top=5,
        reservoir=12,
        n_bands=3,
        per_band=2,
        n_random=3,
        n_nonactivating=4,
        token_sample=40,
        window=10,
        before=6,
        min_examples=30,
        seqs_per_batch=5,
    )
    stats = feature_stats(enc, store, HOOK, cfg)
    return store, enc, f, mask, stats, cfg


def test_counts_max_mean_and_histogram(reference):
    _, _, f, mask, stats, _ = reference
    flat = f.reshape(-1, f.shape[-1])
    assert stats.n_tokens == int(mask.sum())
    np.testing.assert_array_equal(stats.fire_counts, (flat > 0).sum(0).numpy())
    np.testing.assert_allclose(stats.max_acts, flat.max(0).values.numpy(), rtol=1e-6)
    active = (flat > 0).sum(0).clamp_min(1)
    np.testing.assert_allclose(stats.mean_acts, (flat.sum(0) / active).double().numpy(), rtol=1e-5)
    for j in range(flat.shape[1]):
        values = flat[:, j][flat[:, j] > 0].numpy()
        ref, _ = np.histogram(
            np.clip(values, HIST_EDGES[0], HIST_EDGES[-1] * 0.999), bins=HIST_EDGES
        )
        np.testing.assert_array_equal(stats.hist_counts[j], ref)
    assert 0 < (stats.fire_counts == 0).sum() or stats.fire_counts.min() < 30  # rare latents exist


def test_top_examples_are_the_true_top(reference):
    _, _, f, _, stats, cfg = reference
    table = dashboards.example_rows("s", stats).to_pylist()
    S, T, d = f.shape
    for j in range(d):
        col = f[:, :, j].reshape(-1)
        n_act = int((col > 0).sum())
        ref_vals, _ = col.topk(min(cfg.n_top, n_act)) if n_act else (torch.zeros(0), torch.zeros(0))
        top = [r for r in table if r["feature"] == j and r["kind"] == "top"]
        assert [r["rank"] for r in top] == list(range(len(ref_vals)))
        np.testing.assert_allclose([r["activation"] for r in top], ref_vals.numpy(), rtol=1e-6)
        # positions: ties are real (same prefix, same activation), so check the value there
        for r in top:
            assert float(f[r["seq"], r["pos"], j]) == pytest.approx(r["activation"], rel=1e-6)
        assert len({(r["seq"], r["pos"]) for r in top}) == len(top)


def test_windows_hold_the_right_tokens_and_activations(reference):
    store, _, f, _, stats, cfg = reference
    tokens = store.group["tokens"][:]
    rows = dashboards.example_rows("s", stats).to_pylist()
    assert {r["kind"] for r in rows} == {"top", "quantile", "random", "nonactivating"}
    silent_first: dict[int, list[bool]] = {}
    for r in rows:
        start = r["window_start"]
        assert len(r["tokens"]) == len(r["acts"]) == cfg.window
        assert start <= r["pos"] < start + cfg.window and 0 <= start <= store.seq_len - cfg.window
        assert r["tokens"] == tokens[r["seq"], start : start + cfg.window].tolist()
        np.testing.assert_allclose(
            r["acts"], f[r["seq"], start : start + cfg.window, r["feature"]].numpy(), rtol=1e-6
        )
        center = float(f[r["seq"], r["pos"], r["feature"]])
        if r["kind"] == "nonactivating":
            assert center == 0.0
            silent_first.setdefault(r["feature"], []).append(max(r["acts"]) == 0)
        else:
            assert center > 0 and r["activation"] == pytest.approx(center, rel=1e-6)
    for flags in silent_first.values():  # windows silent throughout come before the others
        assert flags == sorted(flags, reverse=True)


def test_quantile_bands_increase_and_random_examples_activate(reference):
    _, _, f, _, stats, cfg = reference
    rows = dashboards.example_rows("s", stats).to_pylist()
    for j in range(f.shape[-1]):
        quant = [r for r in rows if r["feature"] == j and r["kind"] == "quantile"]
        if not quant:
            continue
        bands = sorted({r["band"] for r in quant})
        lows = [min(r["activation"] for r in quant if r["band"] == b) for b in bands]
        highs = [max(r["activation"] for r in quant if r["band"] == b) for b in bands]
        assert all(h <= lo for h, lo in zip(highs[:-1], lows[1:]))  # bands do not overlap
        n_active = int((f[..., j] > 0).sum())
        rand = [r for r in rows if r["feature"] == j and r["kind"] == "random"]
        assert len(rand) == min(cfg.n_random, n_active)
        assert len({(r["seq"], r["pos"]) for r in rand}) == len(rand)


def test_feature_rows_flags(reference):
    _, _, f, _, stats, cfg = reference
    table = dashboards.feature_rows("s", stats, cfg.min_examples).to_pylist()
    counts = (f.reshape(-1, f.shape[-1]) > 0).sum(0)
    for row in table:
        n = int(counts[row["feature"]])
        assert row["n_active"] == n and row["dead"] == (n == 0)
        assert row["too_few_examples"] == (n < cfg.min_examples)
        assert row["density"] == pytest.approx(n / stats.n_tokens)


def test_logit_effects_match_dense_reference():
    g = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    W_dec, W_U, scale = (
        torch.randn(37, 16, generator=g),
        torch.randn(16, 300, generator=g),
        torch.rand(16, generator=g),
    )
    eff = logit_effects(W_dec, W_U, scale, n=5, bins=8, block=10)
    dense = (W_dec.double() * scale.double()) @ W_U.double()
    np.testing.assert_array_equal(eff.top_ids, dense.topk(5, dim=1).indices.numpy())
    np.testing.assert_array_equal(
        eff.bottom_ids, dense.topk(5, dim=1, largest=False).indices.numpy()
    )
    np.testing.assert_allclose(eff.top_values, dense.topk(5, dim=1).values.numpy(), rtol=1e-5)
    assert (eff.hist_counts.sum(1) == 300).all()
    np.testing.assert_allclose(eff.hist_edges[:, 0], dense.min(1).values.numpy(), rtol=1e-5)
