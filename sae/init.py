"""Data-dependent initialisation: input scale, the geometric median for b_dec, and the
per-latent firing thresholds of a sparse start."""

from __future__ import annotations

import torch
from torch import Tensor


def input_scale(x: Tensor) -> float:
    """The factor that gives the sample unit mean squared norm: 1 / sqrt(E‖x‖²)."""
    mean_sq = x.double().pow(2).sum(-1).mean()
    if not torch.isfinite(mean_sq) or mean_sq <= 0:
        return 1.0
    return float(mean_sq.rsqrt())


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 200, tol: float = 1e-7) -> Tensor:
    """Weiszfeld's algorithm in float64: the point minimising Σ‖x_i − y‖."""
    pts = x.double()
    y = pts.mean(0)
    for _ in range(iters):
        dist = (pts - y).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        nxt = (w[:, None] * pts).sum(0) / w.sum()
        moved = (nxt - y).norm()
        y = nxt
        if moved <= tol * (y.norm() + 1e-12):
            break
    return y.to(x.dtype)


def b_dec_init(x: Tensor, how: str) -> Tensor | None:
    """The starting b_dec for `how` ("geometric_median", "mean", "zeros" -> None)."""
    if how == "geometric_median":
        return geometric_median(x)
    if how == "mean":
        return x.mean(0)
    return None


@torch.no_grad()
def firing_thresholds(pre: Tensor, l0: float) -> Tensor:
    """Per latent, the value its pre-activations `pre [N, d_sae]` exceed on a fraction
    l0 / d_sae of the rows (at least one row, at most N - 1): latent i thresholded there
    fires on that fraction of the sample, so a row has about l0 active latents."""
    n, d_sae = pre.shape
    above = min(n - 1, max(1, round(n * l0 / d_sae)))
    return pre.float().kthvalue(n - above, dim=0).values.to(pre.dtype)
