"""Reconstruction and sparsity, streamed over the store in float64.

The definitions (also in the core eval's metric catalogue), each pinned by a test:
- L0 = mean number of non-zero latents per token.
- MSE = mean over tokens of ‖x − x̂‖² (summed over d, then averaged: batch-size independent).
- Explained variance = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean over the eval set, numerator and
  denominator summed separately over all tokens (predicting x̄ gives exactly 0). FVU = 1 − EV.
- Cosine = mean cos(x, x̂); L2 ratio = mean ‖x̂‖/‖x‖; relative reconstruction bias
  = E‖x̂‖² / E⟨x, x̂⟩.
- Density of latent i = fraction of tokens with f_i > 0; dead = density 0; dense = density > 0.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

DENSE_THRESHOLD = 0.1
DENSITY_BINS = np.linspace(-8.0, 0.0, 33)
"""log10-density histogram bins; dead latents are counted apart."""


@dataclass
class ReconstructionStats:
    """Streaming float64 sums, so metrics do not depend on how the tokens were batched."""

    d_in: int
    d_sae: int
    n: int = 0
    sum_sq_err: float = 0.0
    sum_sq_x: float = 0.0
    sum_x: Tensor = field(default=None)  # type: ignore[assignment]
    sum_cos: float = 0.0
    sum_l2_ratio: float = 0.0
    sum_sq_xhat: float = 0.0
    sum_dot: float = 0.0
    sum_l0: float = 0.0
    fire_counts: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sum_x is None:
            self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        if self.fire_counts is None:
            self.fire_counts = torch.zeros(self.d_sae, dtype=torch.float64)

    def update(self, x: Tensor, x_hat: Tensor, l0: Tensor, fire_counts: Tensor) -> None:
        """Add a batch: inputs and reconstructions `[N, d_in]`, active latents per token `[N]`,
        and how many of the N tokens each latent fired on `[d_sae]`."""
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.sum_sq_err += float((x - x_hat).pow(2).sum())
        self.sum_sq_x += float(x.pow(2).sum())
        self.sum_x += x.sum(0).cpu()
        x_norm, xhat_norm = x.norm(dim=1), x_hat.norm(dim=1)
        denom = (x_norm * xhat_norm).clamp_min(1e-30)
        self.sum_cos += float(
            ((x * x_hat).sum(1) / denom).where(xhat_norm > 0, torch.zeros_like(denom)).sum()
        )
        self.sum_l2_ratio += float((xhat_norm / x_norm.clamp_min(1e-30)).sum())
        self.sum_sq_xhat += float(xhat_norm.pow(2).sum())
        self.sum_dot += float((x * x_hat).sum())
        self.sum_l0 += float(l0.sum())
        self.fire_counts += fire_counts.double().cpu()

    def metrics(self) -> dict[str, float]:
        n = self.n
        if n == 0:
            raise ValueError("no tokens were evaluated")
        total_var = self.sum_sq_x - float(self.sum_x.pow(2).sum()) / n
        ev = 1.0 - self.sum_sq_err / total_var if total_var > 0 else float("nan")
        density = self.fire_counts / n
        return {
            "l0": self.sum_l0 / n,
            "mse": self.sum_sq_err / n,
            "explained_variance": ev,
            "fvu": 1.0 - ev,
            "cosine": self.sum_cos / n,
            "l2_ratio": self.sum_l2_ratio / n,
            "relative_reconstruction_bias": self.sum_sq_xhat / self.sum_dot
            if self.sum_dot
            else float("nan"),
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "n_tokens": float(n),
        }

    def density_histogram(self) -> tuple[list[float], list[int], int]:
        """(bin edges of log10 density, counts, number of dead latents)."""
        density = (self.fire_counts / max(self.n, 1)).numpy()
        alive = density[density > 0]
        counts, _ = np.histogram(np.log10(alive), bins=DENSITY_BINS)
        return DENSITY_BINS.tolist(), counts.tolist(), int((density == 0).sum())


@torch.no_grad()
def reconstruction_stats(sae, batches: Iterable[Tensor]) -> ReconstructionStats:
    """One pass of the SAE over `[N, d_in]` batches of raw activations."""
    stats = ReconstructionStats(d_in=sae.d_in, d_sae=sae.d_sae)
    for x in batches:
        code = sae.encode_sparse(x)
        x_hat = sae.decode_sparse(code)
        stats.update(x, x_hat, code.l0(), code.fire_counts())
    return stats


@torch.no_grad()
def target_reconstruction_stats(tc, pairs: Iterable[tuple[Tensor, Tensor]]) -> ReconstructionStats:
    """`reconstruction_stats` of a transcoder: over `(x [N, d_in], y [N, d_out])` pairs of raw
    input and target activations, every metric compares the target y with the prediction
    ŷ = decode(encode(x)) + skip(x)."""
    stats = ReconstructionStats(d_in=tc.d_out, d_sae=tc.d_sae)
    for x, y in pairs:
        code = tc.encode_sparse(x)
        y_hat = tc.decode_sparse(code) + tc.skip_out(x)
        stats.update(y, y_hat, code.l0(), code.fire_counts())
    return stats


@torch.no_grad()
def clt_reconstruction_stats(
    clt, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[ReconstructionStats, dict[int, ReconstructionStats]]:
    """`reconstruction_stats` of a cross-layer transcoder over `(x [N, L, d_in], y [N, L,
    d_out])` batches of raw inputs and targets: the pooled stats (every target side by side,
    one `[L * d_out]` vector per token, so its FVU is Σ_l SSE_l / Σ_l total variance_l; L0
    counts every layer's latents) and each output layer's own (its target against
    ŷ_l' = b_dec[l'] + Σ_{l <= l'} f_l W_dec[l -> l'], L0 and densities of its own latents)."""
    layers = clt.layers
    pooled = ReconstructionStats(d_in=len(layers) * clt.d_out, d_sae=clt.d_sae)
    per_layer = {layer: ReconstructionStats(d_in=clt.d_out, d_sae=clt.d_latent) for layer in layers}
    for x, y in batches:
        codes = [clt.encode_layer_sparse(layer, x[:, p]) for p, layer in enumerate(layers)]
        dense = [code.to_dense() for code in codes]
        y_hat = torch.stack([
            clt.bias(dst) + sum(clt.decode_to(src, dst, dense[p]) for p, src in enumerate(layers[: q + 1]))
            for q, dst in enumerate(layers)
        ], dim=1)  # fmt: skip
        for p, layer in enumerate(layers):
            per_layer[layer].update(y[:, p], y_hat[:, p], codes[p].l0(), codes[p].fire_counts())
        pooled.update(
            y.flatten(1), y_hat.flatten(1), sum(c.l0() for c in codes),
            torch.cat([c.fire_counts() for c in codes]),
        )  # fmt: skip
    return pooled, per_layer
