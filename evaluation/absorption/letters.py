"""Feature absorption on the first-letter task (after Chanin et al. 2024, and SAEBench).

Data: token positions of a store whose token is one whole word (decoded: an optional leading
space, then only ASCII letters, at least two), labelled by its first letter (lower-case). Words
are grouped case-insensitively (" The", "the" are one word); whole words, not occurrences, are
split between train and test (seeded), so the probes must generalise to unseen words.

For each letter L with enough data:
1. a logistic probe "starts with L" on the raw activations of the train tokens (class-balanced
   weights, standardised inputs) gives the probe and its unit direction p̂ in activation space;
2. the letter's main latents are the top `k_main` of k-sparse probing on the train tokens: the
   latents whose mean activation exceeds most on L-words over other words;
3. the scored tokens are the test tokens of L that the probe classifies correctly. Such a token
   is ABSORBED (SAEBench's "full absorption") when every main latent is silent (activation ≤ 0)
   and the other latent j with the largest projection on the probe, f_j (W_dec[j] · p̂), is
   aligned with it, cos(W_dec[j], p̂) ≥ `cos_threshold`, and carries at least `min_share` of the
   activation's own projection, f_j (W_dec[j] · p̂) ≥ min_share · (x − b_dec) · p̂ > 0.
   The share rule keeps a latent that barely touches p̂ (a 0.025 cosine is within the spread
   of random directions in a few hundred dimensions) from counting as an absorber. SAEBench
   projects x itself (and uses activation × cosine); we subtract b_dec, the part of the
   reconstruction that no latent carries, and use the latent's actual decoder contribution (the
   same for unit-norm decoders and b_dec = 0).
4. rate(L) = absorbed / scored tokens. Letters with fewer than `min_examples` scored tokens are
   reported as insufficient (rate None), not dropped; the mean is over the other letters.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.evaluation.absorption.config import AbsorptionConfig
from saelab.evaluation.probing.probes import (
    dense_rows,
    encode_sparse,
    fit_probe,
    probe_direction,
    top_latents,
)

WORD = re.compile(r"^ ?[A-Za-z]{2,}$")
"""A single whole word as a decoded token: optional leading space, ASCII letters, length ≥ 2."""


@dataclass
class LetterResult:
    """Counts and rate for one letter."""

    letter: str
    n_train: int
    """Train tokens of this letter."""
    n_test: int
    """Test tokens of this letter."""
    n_scored: int
    """Test tokens of this letter that the probe classifies correctly (the rate's denominator)."""
    n_main_silent: int
    """Scored tokens on which every main latent is silent."""
    n_absorbed: int
    """Scored tokens counted as absorbed."""
    main_latents: list[int]
    """The letter's main latents (empty when no probe could be trained)."""
    rate: float | None
    """n_absorbed / n_scored; None when n_scored < min_examples (insufficient)."""


@dataclass
class AbsorptionResult:
    """Per-letter absorption and its mean."""

    config: AbsorptionConfig
    letters: list[LetterResult]
    """All 26 letters, a to z, insufficient ones included."""
    n_tokens: int
    """Word tokens used (train and test)."""
    n_words: int
    """Distinct words (case-insensitive)."""

    @property
    def scored(self) -> list[LetterResult]:
        return [r for r in self.letters if r.rate is not None]

    @property
    def insufficient(self) -> list[str]:
        return [r.letter for r in self.letters if r.rate is None]

    @property
    def mean_rate(self) -> float | None:
        """Mean absorption rate over the letters with enough examples (None if there are none)."""
        rates = [r.rate for r in self.scored]
        return float(np.mean(rates)) if rates else None

    def metrics(self) -> dict[str, float]:
        """Long-form rows: absorption_mean (absent when no letter has enough examples), the
        numbers of scored/insufficient letters, and absorption_rate_<L> / absorption_n_<L>."""
        out = {} if self.mean_rate is None else {"absorption_mean": self.mean_rate}
        out["absorption_letters_scored"] = float(len(self.scored))
        out["absorption_letters_insufficient"] = float(len(self.insufficient))
        out["absorption_n_tokens"] = float(self.n_tokens)
        for r in self.letters:
            if r.rate is not None:
                out[f"absorption_rate_{r.letter}"] = r.rate
            out[f"absorption_n_{r.letter}"] = float(r.n_scored)
        return out

    def conventions(self) -> dict:
        return {
            **asdict(self.config),
            "word_pattern": WORD.pattern,
            "split_unit": "word (case-insensitive)",
            "main_latents": "top k_main of mean(L) - mean(not L) on train",
            "absorbed_rule": "main latents silent; the top other latent by f_j W_dec[j].p has "
            "cos >= cos_threshold and f_j W_dec[j].p >= min_share (x - b_dec).p > 0",
            "rate_denominator": "test tokens of L the probe classifies correctly",
        }

    def to_dict(self) -> dict:
        return {**asdict(self), "config": asdict(self.config), "mean_rate": self.mean_rate}


# -- data -------------------------------------------------------------------------------------


def word_of(token_text: str) -> str | None:
    """The lower-case word of a decoded token, or None when it is not a single whole word."""
    return token_text.strip().lower() if WORD.match(token_text) else None


def word_tokens(store, hook: str, tokenizer, cfg: AbsorptionConfig) -> tuple[Tensor, list[str]]:
    """Raw activations `[N, d]` at the whole-word tokens of a store's committed chunks, and each
    token's lower-case word (at most `max_per_word` per word, `max_tokens` in all)."""
    store.check_hook(hook)
    word_by_id: dict[int, str | None] = {}
    seen: dict[str, int] = {}
    acts_out, words = [], []
    for chunk in store.committed_chunks():
        tokens = store.read_tokens(chunk)
        picks = []
        for s, t in zip(*np.nonzero(store.token_mask(chunk))):
            if cfg.max_tokens is not None and len(words) >= cfg.max_tokens:
                break
            tid = int(tokens[s, t])
            if tid not in word_by_id:
                word_by_id[tid] = word_of(tokenizer.decode([tid]))
            word = word_by_id[tid]
            if word is None or seen.get(word, 0) >= cfg.max_per_word:
                continue
            seen[word] = seen.get(word, 0) + 1
            picks.append((s, t))
            words.append(word)
        if picks:
            rows = torch.tensor(picks)
            acts_out.append(store.read_acts(hook, chunk)[rows[:, 0], rows[:, 1]].float())
        if cfg.max_tokens is not None and len(words) >= cfg.max_tokens:
            break
    if not words:
        raise UserError(f"store {store.url!r} has no whole-word tokens")
    return torch.cat(acts_out), words


def split_words(words: list[str], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test token indices, every word wholly on one side (seeded)."""
    unique = sorted(set(words))
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(unique)[: round(len(unique) * test_fraction)].tolist())
    is_test = np.array([w in held for w in words])
    return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


# -- the rule ---------------------------------------------------------------------------------


def absorbed_mask(
    f: Tensor,
    x: Tensor,
    main: list[int],
    W_dec: Tensor,
    b_dec: Tensor,
    p: Tensor,
    cos_threshold: float,
    min_share: float,
) -> tuple[Tensor, Tensor]:
    """(main latents silent, absorbed) per row of dense latents `f [N, d_sae]` with raw
    activations `x [N, d_in]`, for the unit probe direction `p [d_in]` (see the module docstring)."""
    silent = (f[:, main] <= 0).all(dim=1)
    proj = W_dec @ p  # [d_sae]: each decoder row's projection on the probe
    cos = proj / W_dec.norm(dim=1).clamp_min(1e-12)
    contribution = f * proj  # [N, d_sae]
    contribution[:, main] = -torch.inf
    top_value, top = contribution.max(dim=1)
    target = (x - b_dec) @ p  # [N]: the activation's own projection on the probe
    aligned = cos[top] >= cos_threshold
    carries = (target > 0) & (top_value >= min_share * target)
    return silent, silent & aligned & carries


@dataclass
class LetterProbes:
    """The half of the evaluation that does not depend on the SAE: the word split and, per
    letter, its probe's direction and the test tokens it classifies correctly. Computed once
    and shared by every SAE evaluated on the same word tokens."""

    x: np.ndarray
    """Raw whole-word token activations `[N, d_in]`."""
    words: list[str]
    """Each row's lower-case word."""
    first: np.ndarray
    """Each row's first letter."""
    train: np.ndarray
    """Train row indices (whole words on one side of the split)."""
    test: np.ndarray
    """Test row indices."""
    by_letter: dict[str, tuple[np.ndarray, Tensor] | None]
    """Per letter: (scored test rows, unit probe direction), or None where no probe could be
    trained (fewer than two train tokens on one side)."""


def letter_probes(acts: Tensor, words: list[str], cfg: AbsorptionConfig) -> LetterProbes:
    """Split the words and train the 26 first-letter probes on raw activations `acts [N, d_in]`."""
    if len(words) != len(acts):
        raise UserError(f"{len(words)} words for {len(acts)} activation rows")
    words = [w.strip().lower() for w in words]
    first = np.array([w[0] for w in words])
    train, test = split_words(words, cfg.test_fraction, cfg.seed)
    x = acts.detach().float().cpu().numpy()
    by_letter: dict[str, tuple[np.ndarray, Tensor] | None] = {}
    for letter in string.ascii_lowercase:
        y = first == letter
        n_train = int(y[train].sum())
        if n_train < 2 or n_train > len(train) - 2:
            by_letter[letter] = None
            continue
        probe = fit_probe(x[train], y[train], cfg.C, cfg.max_iter, balanced=True)
        test_pos = test[y[test]]
        scored = test_pos[probe.predict(x[test_pos]).astype(bool)] if len(test_pos) else test_pos
        by_letter[letter] = (scored, torch.from_numpy(probe_direction(probe)))
    return LetterProbes(x, words, first, train, test, by_letter)


@torch.no_grad()
def absorption(
    sae,
    acts: Tensor,
    words: list[str],
    cfg: AbsorptionConfig | None = None,
    probes: LetterProbes | None = None,
) -> AbsorptionResult:
    """First-letter absorption of `sae` on whole-word token activations `acts [N, d_in]` (raw,
    as the SAE reads them) with each token's word. `probes` (from `letter_probes` on the same
    activations, words and config) skips retraining the probes."""
    cfg = cfg or AbsorptionConfig()
    cfg.validate()
    if probes is None:
        probes = letter_probes(acts, words, cfg)
    elif len(probes.words) != len(acts):
        raise UserError(f"probes trained on {len(probes.words)} rows, given {len(acts)}")
    f = encode_sparse(sae, acts, cfg.batch_size)
    f_train = f.index_select(0, torch.from_numpy(probes.train))  # sparse: only class sums needed
    W_dec = sae.W_dec.detach().double().cpu()
    b_dec = getattr(sae, "b_dec", None)
    b_dec = torch.zeros(W_dec.shape[1]) if b_dec is None else b_dec.detach().cpu()
    letters = [
        _letter(letter, probes, f, f_train, W_dec, b_dec.double(), cfg)
        for letter in string.ascii_lowercase
    ]
    return AbsorptionResult(
        cfg, letters, n_tokens=len(probes.words), n_words=len(set(probes.words))
    )


def _letter(
    letter: str,
    probes: LetterProbes,
    f: Tensor,
    f_train: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    cfg: AbsorptionConfig,
) -> LetterResult:
    """Main latents and absorption counts of one letter, with its probe from `probes`."""
    y = probes.first == letter
    n_train, n_test = int(y[probes.train].sum()), int(y[probes.test].sum())
    probe = probes.by_letter[letter]
    if probe is None:
        return LetterResult(letter, n_train, n_test, 0, 0, 0, [], None)
    scored, p = probe
    main = top_latents(f_train, y[probes.train], cfg.k_main, signed=True)
    silent, absorbed = absorbed_mask(
        dense_rows(f, scored).double(),
        torch.from_numpy(probes.x[scored]).double(),
        main,
        W_dec,
        b_dec,
        p,
        cfg.cos_threshold,
        cfg.min_share,
    )
    n_scored, n_absorbed = len(scored), int(absorbed.sum())
    rate = n_absorbed / n_scored if n_scored >= cfg.min_examples else None
    return LetterResult(
        letter, n_train, n_test, n_scored, int(silent.sum()), n_absorbed, main, rate
    )


_SHARED: dict[tuple, tuple[Tensor, list[str], LetterProbes]] = {}
"""The last store's word tokens and probes, keyed by what they depend on (one entry), so an
evaluation of many SAEs on one store reads the words and trains the probes once."""


def first_letter_absorption(
    sae, store, hook: str, cfg: AbsorptionConfig | None = None, tokenizer=None
) -> AbsorptionResult:
    """Absorption measured on the whole-word tokens of a store (all committed chunks).

    `tokenizer` defaults to the store's model's tokenizer (loaded alone, without the model).
    """
    cfg = cfg or AbsorptionConfig()
    cfg.validate()
    if tokenizer is None:
        from transformers import AutoTokenizer

        from saelab.activations.models import resolve_model_folder

        tokenizer = AutoTokenizer.from_pretrained(
            str(resolve_model_folder(store.attrs["model"])[0])
        )
    key = (
        str(store.url),
        json.dumps(dict(store.attrs), sort_keys=True, default=str),  # what and how much it holds
        hook,
        getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        tuple(sorted(asdict(cfg).items())),
    )
    if key not in _SHARED:
        acts, words = word_tokens(store, hook, tokenizer, cfg)
        _SHARED.clear()
        _SHARED[key] = (acts, words, letter_probes(acts, words, cfg))
    acts, words, probes = _SHARED[key]
    return absorption(sae, acts, words, cfg, probes)
