"""One harness for every method: clean references computed once, then for any set of edits the
KL on neutral text, steered generations, and their metrics.

Strengths are in units of a latent's typical activation (`unit`, by default its max activation
over the features eval): `add` at strength s adds s·max_act·W_dec[i] (the latent's own decoder
contribution at s times its max); `clamp` sets the latent to s·max_act; `cap` caps the projection
on the unit decoder direction at s·max_act·‖W_dec[i]‖. DiffMean adds s times the mean difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.steering import metrics
from saelab.steering.generate import Sampling, generate
from saelab.steering.interventions import Add, Cap, Clamp, Edit, Steering, hooked

MODES = ("add", "clamp", "ablate", "cap")
UNITS = ("max_act", "mean_act")
MAX_STRENGTH = 1000.0
"""Larger strengths are refused: at 1000× a latent's max activation nothing is left to measure."""


def check_strength(s: float) -> float:
    s = float(s)
    if not math.isfinite(s) or abs(s) > MAX_STRENGTH:
        raise UserError(
            f"`strength` {s} is not usable: give a finite number within ±{MAX_STRENGTH:g} "
            "(in units of the latent's typical activation)"
        )
    return s


@dataclass
class Outcome:
    """The metrics of one intervention (means over samples) and the samples themselves."""

    kl: float
    feature_act: float
    concept: float
    perplexity: float
    texts: list[str]
    tokens: list[list[int]]
    sample_feature_act: np.ndarray
    sample_perplexity: np.ndarray
    sample_concept: np.ndarray


class Harness:
    """The model, SAE and hook of a run, the prompts, and clean references computed once."""

    def __init__(
        self,
        target,
        features: list[int],
        prompts: list[str],
        neutral: list[str],
        sampling: Sampling,
        n_samples: int,
        positions: str,
        explanation: str | None,
    ) -> None:
        self.t, self.features = target, list(features)
        self.bridge, self.tok = target.model.bridge, target.model.tokenizer
        self.sampling, self.n_samples, self.positions = sampling, n_samples, positions
        self.explanation = explanation
        self.prompts = [self.encode(p) for p in prompts]
        # neutral texts cut to the shortest one's length: one batched forward per KL
        encoded = [self.encode(t) for t in neutral]
        width = min(len(ids) for ids in encoded)
        self.neutral = torch.stack([ids[:width] for ids in encoded])
        self.W_dec = target.sae.W_dec.detach().float()
        self.top_tokens = self._top_logit_tokens() if explanation is None else []
        self.concept_kind = "embedding" if explanation is not None else "logit_lift"
        with torch.no_grad():
            self.clean_neutral = self.bridge(self.neutral, return_type="logits")
        self.clean = self.generate_samples(None)

    def encode(self, text: str) -> Tensor:
        from saelab.activations.corpus import bos_token_id

        ids = [bos_token_id(self.tok)] + self.tok.encode(text, add_special_tokens=False)
        return torch.tensor(ids, dtype=torch.long)

    def _top_logit_tokens(self, n: int = 10) -> list[int]:
        from saelab.evaluation.features.logits import unembedding

        w_u, scale = unembedding(self.bridge)
        rows = self.W_dec[self.features]
        if scale is not None:
            rows = rows * scale
        effect = rows @ w_u
        return sorted({int(i) for r in effect for i in r.topk(n).indices})

    # -- edits ------------------------------------------------------------------------------

    def unit_values(self, unit: str) -> list[float]:
        values = []
        for f in self.features:
            row = self.t.stats.get(f)
            v = None if row is None else getattr(row, unit)
            if not v or not math.isfinite(v) or v <= 0:
                raise UserError(
                    f"latent {f} has no positive {unit} in the results database (it never fired "
                    "in the features eval): its strength unit is undefined; pick a live latent"
                )
            values.append(float(v))
        return values

    def feature_edits(self, mode: str, strength: float, unit: str, ablation: str) -> list[Edit]:
        if mode == "ablate":
            if ablation == "zero":
                values = [0.0] * len(self.features)
            else:  # the mean over all tokens: density × mean over active tokens
                values = [
                    float(self.t.stats[f].density or 0) * float(self.t.stats[f].mean_act or 0)
                    for f in self.features
                ]
            return [Clamp(self.t.sae, self.features, torch.tensor(values))]
        units = self.unit_values(unit)
        if mode == "add":
            vector = sum(u * strength * self.W_dec[f] for f, u in zip(self.features, units))
            return [Add(vector)]
        if mode == "clamp":
            return [Clamp(self.t.sae, self.features, torch.tensor([strength * u for u in units]))]
        edits: list[Edit] = []
        for f, u in zip(self.features, units):
            norm = float(self.W_dec[f].norm())
            edits.append(Cap(self.W_dec[f] / norm, strength * u * norm))
        return edits

    # -- measuring --------------------------------------------------------------------------

    def steering(self, edits: list[Edit], positions: str | None = None) -> Steering:
        return Steering(self.bridge, self.t.hook, edits, positions or self.positions)

    @torch.no_grad()
    def kl(self, edits: list[Edit]) -> tuple[float, Tensor]:
        """Mean KL(clean ‖ steered) over neutral positions after BOS, edits at every position."""
        steering = self.steering(edits, "all")
        with hooked(steering):
            steered = self.bridge(self.neutral, return_type="logits")
        kl = metrics.kl_per_token(self.clean_neutral[:, 1:], steered[:, 1:])
        return float(kl.mean()), steered

    def generate_samples(self, edits: list[Edit] | None) -> list[tuple[int, Tensor, Tensor]]:
        """(seed, prompt ids, new tokens [n_samples, T]) per prompt."""
        out = []
        for i, ids in enumerate(self.prompts):
            cfg = Sampling(**{**self.sampling.__dict__, "seed": self.sampling.seed + i})
            if edits is None:
                new = generate(self.bridge, ids, cfg, None, self.n_samples)
            else:
                steering = self.steering(edits)
                with hooked(steering):
                    new = generate(self.bridge, ids, cfg, steering, self.n_samples)
            out.append((cfg.seed, ids, new))
        return out

    def texts(self, generated) -> list[str]:
        eos = self.tok.eos_token_id
        texts = []
        for _, _, new in generated:
            for row in new.tolist():
                if eos in row:
                    row = row[: row.index(eos)]
                texts.append(self.tok.decode(row))
        return texts

    def measure(self, edits: list[Edit] | None, kl: tuple[float, Tensor] | None = None) -> Outcome:
        """The metrics of these edits; `kl`: their `self.kl(edits)` when already computed
        (the strength search measured it)."""
        if edits is None:
            kl, steered_neutral, generated = 0.0, self.clean_neutral, self.clean
        else:
            kl, steered_neutral = kl if kl is not None else self.kl(edits)
            generated = self.generate_samples(edits)
        acts, ppl, tokens = [], [], []
        for _, ids, new in generated:
            full = torch.cat([ids[None].repeat(new.shape[0], 1), new], 1)
            s = metrics.generated_text_stats(
                self.bridge, self.t.sae, self.t.hook, full, len(ids), self.features,
                eos=self.tok.eos_token_id,
            )  # fmt: skip
            acts.append(s.feature_act)
            ppl.append(s.perplexity)
            tokens += new.tolist()
        texts = self.texts(generated)
        if self.concept_kind == "embedding":
            concept = metrics.embedding_similarity(texts, self.explanation)
        else:
            lift = metrics.logit_lift(
                self.clean_neutral[:, 1:], steered_neutral[:, 1:], self.top_tokens
            )
            concept = np.full(len(texts), lift)
        acts_a, ppl_a = np.concatenate(acts), np.concatenate(ppl)
        return Outcome(
            kl, float(acts_a.mean()), float(np.mean(concept)), float(np.exp(np.log(ppl_a).mean())),
            texts, tokens, acts_a, ppl_a, np.asarray(concept, np.float64),
        )  # fmt: skip


def strength_for_kl(
    kl_of: Callable[[float], float],
    target: float,
    start: float = 1.0,
    rel_tol: float = 0.05,
    max_steps: int = 24,
) -> tuple[float, float]:
    """The strength s ≥ 0 whose KL is within rel_tol of target, by bracketing and bisection
    (KL grows with the strength of an addition or a clamp)."""
    if not (math.isfinite(target) and target > 0):
        raise UserError(f"`target_kl` must be a positive number of nats (got {target})")
    lo, hi = 0.0, start
    kl_lo, kl_hi = 0.0, kl_of(hi)
    steps = 0
    while kl_hi < target:
        lo, hi, kl_lo = hi, hi * 2, kl_hi
        steps += 1
        if hi > MAX_STRENGTH or steps > max_steps:
            raise UserError(
                f"no strength up to {MAX_STRENGTH:g} reaches a KL of {target} nats "
                f"(KL {kl_hi:.3g} at {lo:g}); ask for a smaller target KL"
            )
        kl_hi = kl_of(hi)
    best = (hi, kl_hi)
    points = [(lo, kl_lo), (hi, kl_hi)]
    for _ in range(max_steps):
        if abs(best[1] - target) <= rel_tol * target:
            break
        mid = _power_law_guess(points, target)
        if mid is None or not lo < mid < hi:
            mid = (lo + hi) / 2
        kl_mid = kl_of(mid)
        points.append((mid, kl_mid))
        if abs(kl_mid - target) < abs(best[1] - target):
            best = (mid, kl_mid)
        if kl_mid < target:
            lo = mid
        else:
            hi = mid
    return best


def _power_law_guess(points: list[tuple[float, float]], target: float) -> float | None:
    """Where KL = a·s^b through the last two points reaches the target (KL grows about as s²
    for small edits), which usually lands within tolerance in two or three steps."""
    (s1, k1), (s2, k2) = points[-2], points[-1]
    if s1 == 0 and s2 > 0 and k2 > 0:
        return s2 * math.sqrt(target / k2)
    if min(s1, s2, k1, k2) <= 0 or s1 == s2 or k1 == k2:
        return None
    b = math.log(k2 / k1) / math.log(s2 / s1)
    if b <= 0:
        return None
    return s2 * (target / k2) ** (1 / b)
