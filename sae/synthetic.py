"""Synthetic activations with a known dictionary: ground truth for tests and benchmarks.

Each row is a sparse non-negative combination of unit-norm random directions plus Gaussian
noise. Batches are generated from (seed, batch index), so the stream is resumable exactly.

The recipe: `n_features` directions drawn from a standard Gaussian in `d_in` dimensions and
normalised (from a seed of their own, never an SAE's: see `DIRECTIONS_SEED`); feature i
fires on a row independently with probability p_i proportional to i^-0.5 (Zipf-like),
scaled so that sum_i p_i = `active`, the mean number of active features per row (each p_i
capped at 1); a firing feature's magnitude is uniform on [0.5, 1.5]; plus N(0, `noise`^2)
per dimension and the fixed offset `offset` · N(0, 1)^d_in.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

DIRECTIONS_SEED = 0x5EED_D1C7
"""Mixed into the seed of the true directions, so that they share no random stream with
an SAE's initialisation (which draws from `manual_seed(cfg.seed)`)."""


class SyntheticActivations:
    """Iterable of float32 `[batch_size, d_in]` batches; `.directions` is the true dictionary."""

    def __init__(
        self,
        d_in: int = 64,
        n_features: int = 256,
        batch_size: int = 1024,
        active: float = 4.0,
        noise: float = 0.01,
        n_batches: int | None = None,
        seed: int = 0,
        hook: str = "synthetic.hook",
        offset: float = 0.0,
    ) -> None:
        self.d_in, self.n_features, self.batch_size = d_in, n_features, batch_size
        self.active, self.noise, self.n_batches, self.seed = active, noise, n_batches, seed
        self.hook = hook
        # Not manual_seed(seed): an SAE initialises its decoder with torch.randn from
        # manual_seed(its seed), so with equal seeds its first rows *were* the true
        # directions and every recovery test started at the answer.
        g = torch.Generator().manual_seed(DIRECTIONS_SEED ^ seed)
        dirs = torch.randn(n_features, d_in, generator=g)
        self.directions = dirs / dirs.norm(dim=1, keepdim=True)
        # Features fire with Zipf-like frequencies, like real ones, averaging `active` per row.
        freq = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float32) ** 0.5
        self.probs = (freq / freq.sum() * active).clamp(max=1.0)
        self.mean = offset * torch.randn(d_in, generator=g)
        self.position = 0

    @property
    def store_info(self) -> dict:
        return {"model": "synthetic", "hooks": {self.hook: self.d_in}, "seed": self.seed}

    def batch(self, index: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        n = self.batch_size
        on = torch.rand(n, self.n_features, generator=g) < self.probs
        mags = 0.5 + torch.rand(n, self.n_features, generator=g)
        coef = on * mags
        x = coef @ self.directions + self.noise * torch.randn(n, self.d_in, generator=g)
        return x + self.mean

    def __iter__(self) -> Iterator[Tensor]:
        while self.n_batches is None or self.position < self.n_batches:
            index = self.position
            self.position += 1
            yield self.batch(index)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def recovery_fraction(true_dirs: Tensor, W_dec: Tensor, threshold: float = 0.9) -> float:
    """Fraction of true directions whose best-matching decoder row has cosine > threshold."""
    t = true_dirs / true_dirs.norm(dim=1, keepdim=True)
    d = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (t @ d.t()).max(dim=1).values
    return float((best > threshold).float().mean())
