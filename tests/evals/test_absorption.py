"""First-letter absorption: a hand-built SAE with a known absorption rate, the rule, and a real run."""

from __future__ import annotations

import random
import string

import numpy as np
import pytest
import torch

from saelab.evaluation.absorption.letters import (
    AbsorptionConfig,
    absorbed_mask,
    absorption,
    first_letter_absorption,
    split_words,
    word_of,
)
from saelab.sae import build_sae, make_config

D_IN, A, B, C, MARK, CONTENT = 16, 0, 1, 2, 7, 8


def hand_built_sae(absorber_decoder: int):
    """A real ReLU SAE over 16 dims: axis 0/1/2 carry "starts with a/b/c", axis 7 marks some words,
    axes 8..15 are word content. Latent 0 reads 'a' but is suppressed by the mark, and latent 1
    fires on exactly the marked 'a' words instead (the textbook absorption), writing
    e[absorber_decoder]. Latents 2/3 read 'b'/'c' (unaffected by the mark), 4 the mark, 5-7 content."""
    e = torch.eye(D_IN)
    enc = torch.stack(
        [e[A] - 2 * e[MARK], e[A] + 2 * e[MARK], e[B], e[C], e[MARK], e[CONTENT], e[9], e[10]]
    )
    # Margins: unmarked 'a' (x0 = 3, x7 = 0): latent 0 at 1.5, latent 1 at -1.5; marked 'a'
    # (x7 = 2): latent 0 at -2.5, latent 1 at 2.5, most of the activation's 3 along 'a'.
    b_enc = torch.tensor([-1.5, -4.5, -1.5, -1.5, -1.0, 0.0, 0.0, 0.0])
    dec = torch.stack([e[A], e[absorber_decoder], e[B], e[C], e[MARK], e[CONTENT], e[9], e[10]])
    sae = build_sae(make_config("relu", d_sae=8), d_in=D_IN).eval()
    with torch.no_grad():
        sae.encoder_weight.copy_(enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(dec)
        sae.b_dec.zero_()
    return sae


def make_words(rng: random.Random, letter: str, n: int) -> list[str]:
    return sorted({letter + "".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(n)})


def letter_data(seed: int):
    """One token per word: 'a' and 'b' words (a quarter of each marked) and four 'c' words."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    a_words, b_words, c_words = (
        make_words(rng, "a", 120),
        make_words(rng, "b", 120),
        make_words(rng, "c", 4),
    )
    marked = set(rng.sample(a_words, len(a_words) // 4)) | set(
        rng.sample(b_words, len(b_words) // 4)
    )
    words, rows = [], []
    for group, axis in ((a_words, A), (b_words, B), (c_words, C)):
        for w in group:
            x = 0.05 * torch.randn(D_IN, generator=g)
            x[axis] += 3.0
            x[CONTENT:] += torch.randn(D_IN - CONTENT, generator=g)
            if w in marked:
                x[MARK] += 2.0
            words.append(" " + w.capitalize() if rng.random() < 0.5 else " " + w)
            rows.append(x)
    return torch.stack(rows), words, marked


def test_known_absorption_rate_is_measured_exactly():
    seed = int(np.random.SeedSequence().entropy % 2**31)
    acts, words, marked = letter_data(seed)
    cfg = AbsorptionConfig(min_examples=10, seed=seed)
    result = absorption(hand_built_sae(absorber_decoder=A), acts, words, cfg)
    by_letter = {r.letter: r for r in result.letters}
    assert [r.letter for r in result.letters] == list(string.ascii_lowercase)

    _, test = split_words([w.strip().lower() for w in words], cfg.test_fraction, cfg.seed)
    test_a = [words[i].strip().lower() for i in test if words[i].strip().lower().startswith("a")]
    expected = sum(w in marked for w in test_a) / len(test_a)
    assert 0 < expected < 1
    a = by_letter["a"]
    assert a.main_latents == [0] and a.n_test == a.n_scored == len(test_a)
    assert a.n_main_silent == a.n_absorbed == sum(w in marked for w in test_a)
    assert a.rate == expected
    b = by_letter["b"]
    assert b.main_latents == [2] and b.rate == 0.0  # marked 'b' words keep their main latent
    assert by_letter["c"].rate is None  # too few examples: reported, not dropped
    assert result.insufficient == [c for c in string.ascii_lowercase if c not in "ab"]

    m = result.metrics()
    assert m["absorption_mean"] == pytest.approx((expected + 0.0) / 2)
    assert m["absorption_rate_a"] == expected and m["absorption_n_a"] == len(test_a)
    assert m["absorption_letters_scored"] == 2 and m["absorption_letters_insufficient"] == 24
    assert "absorption_rate_c" not in m


def test_a_compensating_latent_off_the_probe_direction_is_not_absorption():
    """Same data, but the latent that fires on marked 'a' words writes the 'b' direction, which
    the 'a' probe weighs negatively: the main latent is silent, yet nothing is absorbed."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    acts, words, _ = letter_data(seed)
    result = absorption(
        hand_built_sae(absorber_decoder=B), acts, words, AbsorptionConfig(seed=seed)
    )
    a = next(r for r in result.letters if r.letter == "a")
    assert a.n_main_silent > 0 and a.n_absorbed == 0 and a.rate == 0.0


def test_the_rule_takes_the_top_latent_and_weighs_cosine_and_share():
    p = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    W_dec = torch.tensor(
        [[1.0, 0, 0], [0.6, 0.8, 0], [0.1, 0, 0.995], [0, 1.0, 0]], dtype=torch.float64
    )
    f, x = zip(
        ([0.0, 1.0, 0.0, 0.0], [1.0, 0, 0]),  # latent 1: cos 0.6, 0.6 of the projection 1
        ([0.5, 1.0, 0.0, 0.0], [1.0, 0, 0]),  # the main latent fires
        ([0.0, 0.0, 5.0, 1.0], [1.0, 0, 0]),  # latent 2: cos 0.1, 0.5 of the projection
        ([0.0, 1.0, 0.0, 0.0], [2.0, 0, 0]),  # latent 1 carries 0.3 of the projection only
        ([0.0, 1.0, 8.0, 0.0], [1.0, 0, 0]),  # the top latent is 2 (0.8 > 0.6), with cos 0.1
        ([0.0, 0.0, 0.0, 1.0], [1.0, 0, 0]),  # only an orthogonal latent fires
        ([0.0, 1.0, 0.0, 0.0], [-1.0, 0, 0]),  # the activation projects negatively on the probe
    )
    f, x = torch.tensor(f, dtype=torch.float64), torch.tensor(x, dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    silent, absorbed = absorbed_mask(f, x, [0], W_dec, zero, p, cos_threshold=0.05, min_share=0.4)
    assert silent.tolist() == [True, False, True, True, True, True, True]
    assert absorbed.tolist() == [True, False, True, False, True, False, False]
    _, strict = absorbed_mask(f, x, [0], W_dec, zero, p, cos_threshold=0.2, min_share=0.4)
    assert strict.tolist() == [True, False, False, False, False, False, False]
    # The share is of (x - b_dec) . p: 0.72 of 2.0 is too little, of 2.0 - 0.5 enough.
    f1, x1 = (
        torch.tensor([[0.0, 1.2, 0, 0]], dtype=f.dtype),
        torch.tensor([[2.0, 0, 0]], dtype=f.dtype),
    )
    assert not absorbed_mask(f1, x1, [0], W_dec, zero, p, 0.05, 0.4)[1].item()
    b_dec = torch.tensor([0.5, 0, 0], dtype=f.dtype)
    assert absorbed_mask(f1, x1, [0], W_dec, b_dec, p, 0.05, 0.4)[1].item()


def test_words_and_the_word_split():
    assert word_of(" The") == "the" and word_of("ing") == "ing"
    assert word_of(" a") is None and word_of(" don't") is None and word_of(" 42") is None
    assert word_of(" é t") is None and word_of("  two") is None
    words = ["the", "cat", "the", "sat", "on", "the", "mat", "cat"] * 3
    train, test = split_words(words, 0.4, seed=int(np.random.SeedSequence().entropy % 2**31))
    assert len(train) and len(test)
    assert not {words[i] for i in train} & {words[i] for i in test}


def test_first_letter_absorption_on_a_real_store(small_store, model):
    from saelab.activations.store import ActivationStore

    sae = build_sae(make_config("topk", d_sae=256, k=16, seed=7), d_in=576).eval()
    cfg = AbsorptionConfig(min_examples=5, max_per_word=2)
    result = first_letter_absorption(
        sae,
        ActivationStore(small_store),
        "blocks.2.hook_resid_post",
        cfg,
        tokenizer=model.tokenizer,
    )
    assert result.n_tokens > 300 and len(result.letters) == 26
    assert result.scored and all(0.0 <= r.rate <= 1.0 for r in result.scored)
    assert all(r.n_absorbed <= r.n_main_silent <= r.n_scored <= r.n_test for r in result.letters)
    m = result.metrics()
    assert 0.0 <= m["absorption_mean"] <= 1.0
    assert m["absorption_letters_scored"] + m["absorption_letters_insufficient"] == 26


def test_probes_are_trained_once_per_store_and_give_the_same_result(
    small_store, model, monkeypatch
):
    """Evaluating several SAEs on one store reuses the word tokens and the letter probes; each
    SAE's result equals the one computed from scratch."""
    from saelab.activations.store import ActivationStore
    from saelab.evaluation.absorption import letters as module

    hook, cfg = "blocks.2.hook_resid_post", AbsorptionConfig(min_examples=5, max_per_word=2)
    store = ActivationStore(small_store)
    seed = int(np.random.SeedSequence().entropy % 2**31)
    saes = [
        build_sae(make_config("topk", d_sae=256, k=k, seed=seed + k), d_in=576).eval()
        for k in (8, 16)
    ]
    module._SHARED.clear()
    fits = []
    real_fit = module.fit_probe
    monkeypatch.setattr(module, "fit_probe", lambda *a, **kw: fits.append(1) or real_fit(*a, **kw))
    shared = [
        first_letter_absorption(sae, store, hook, cfg, tokenizer=model.tokenizer) for sae in saes
    ]
    trained = sum(
        p is not None for p in module._SHARED[next(iter(module._SHARED))][2].by_letter.values()
    )
    assert len(fits) == trained > 0  # the second SAE trained no probe
    acts, words = module.word_tokens(store, hook, model.tokenizer, cfg)
    for sae, got in zip(saes, shared):
        fresh = absorption(sae, acts, words, cfg)  # no probes given: trains its own
        assert got.letters == fresh.letters and got.n_tokens == fresh.n_tokens
    assert len(fits) == 3 * trained
