"""How many latents an SAE shares with its seed twins (Paulo & Belrose 2025): each twin's
decoder matched one to one with the SAE's (`saelab.evaluation.seeds`, Hungarian matching on
decoder cosine), a latent shared with a twin when its matched cosine clears the threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saelab.evaluation.seeds import shared_latents


@dataclass
class Stability:
    """Each latent's matched decoder cosine with each twin."""

    threshold: float
    """Decoder cosine at or above which a matched pair counts as shared."""
    cosines: np.ndarray
    """`[n_twins, d_sae]`: latent j's cosine with its partner in twin t."""

    @property
    def shared(self) -> np.ndarray:
        """`[n_twins, d_sae]`: whether latent j is shared with twin t."""
        return self.cosines >= self.threshold

    def per_twin_fraction(self) -> np.ndarray:
        """The share of latents shared with each twin."""
        return self.shared.mean(axis=1)

    def metrics(self) -> dict[str, float]:
        per_twin = self.per_twin_fraction()
        return {
            "shared_fraction": float(per_twin.mean()),
            "mean_matched_cosine": float(self.cosines.mean()),
            "n_twins": float(len(per_twin)),
            "shared_fraction_min": float(per_twin.min()),
            "shared_fraction_max": float(per_twin.max()),
        }

    def intervals(self, resamples: int, seed: int) -> dict[str, tuple[float, float]]:
        """95% percentile-bootstrap intervals of `shared_fraction` and `mean_matched_cosine`
        over the SAE's latents (a latent's matches with every twin are resampled together)."""
        per_latent = np.stack([self.shared.mean(axis=0), self.cosines.mean(axis=0)], axis=1)
        rng = np.random.default_rng(seed)
        n = per_latent.shape[0]
        means = np.empty((resamples, 2))
        for start in range(0, resamples, 64):  # bounded memory at any width
            idx = rng.integers(0, n, size=(min(64, resamples - start), n))
            means[start : start + len(idx)] = per_latent[idx].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5], axis=0)
        return {
            "shared_fraction": (float(low[0]), float(high[0])),
            "mean_matched_cosine": (float(low[1]), float(high[1])),
        }


def seed_stability(sae, twins: list, threshold: float = 0.7) -> Stability:
    """Match the decoder of `sae` (`W_dec [d_sae, d_in]` on the CPU) with each twin's, which
    must have as many latents, and keep each latent's matched cosine per twin."""
    d_sae = sae.W_dec.shape[0]
    cosines = np.empty((len(twins), d_sae))
    for t, twin in enumerate(twins):
        if twin.W_dec.shape[0] != d_sae:
            raise ValueError(f"a seed twin has {twin.W_dec.shape[0]} latents, the SAE {d_sae}")
        found = shared_latents(sae, twin, threshold)
        cosines[t, found.rows] = found.cosines
    return Stability(threshold, cosines)
