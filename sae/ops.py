"""The one place the SAEs call `kernels/`.

Every architecture selects its active latents on pre-activations computed without autograd,
then recomputes only the selected values differentiably (`gather`) and decodes sparsely
(`decode`). When a selection is so dense (early ReLU or Gated training: half the latents
fire) that the sparse kernels would cost more than a dense matmul, the same arithmetic runs
densely here; results are equal up to float rounding.

`kernels` is looked up at call time so a test may stand in for a missing function.
"""

from __future__ import annotations

import torch
from torch import Tensor

import kernels

DENSE_FRACTION = 0.125
"""Selections wider than this fraction of d_sae run through dense matmuls."""


def _dense(k: int, d_sae: int) -> bool:
    return k > DENSE_FRACTION * d_sae


def preacts(x: Tensor, W_enc: Tensor, b_enc: Tensor | None) -> Tensor:
    """`x @ W_enc + b_enc` without autograd: the input of every selection."""
    with torch.no_grad():
        if b_enc is None:
            return x.detach() @ W_enc
        return torch.addmm(b_enc, x.detach(), W_enc)


def topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-row top-k: `(vals, idx)`, no autograd."""
    return kernels.topk_select(pre, k)


def threshold(pre: Tensor, thresh: Tensor | float) -> tuple[Tensor, Tensor]:
    """Entries above a (per-latent or scalar) threshold, padded: `(idx, mask)`."""
    return kernels.threshold_select(pre, thresh)


def batch_topk(pre: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """The top k * rows entries of the whole batch, padded per row: `(idx, mask)`."""
    return kernels.batch_topk_select(pre, k)


def gather(
    x: Tensor, W_enc: Tensor, b_enc: Tensor | None, idx: Tensor, pre: Tensor | None = None
) -> Tensor:
    """Differentiable pre-activations at `idx` ([N, k]); sparse backward to W_enc.

    `pre`, the no-grad `preacts` already computed for the selection (same bias), spares the
    kernels recomputing the selected values."""
    if _dense(idx.shape[1], W_enc.shape[1]):
        dense = x @ W_enc if b_enc is None else torch.addmm(b_enc, x, W_enc)
        return dense.gather(1, idx)
    return kernels.gather_preacts(x, W_enc, b_enc, idx, pre=pre)


def decode(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    """`b_dec + sum_j vals[n, j] W_dec[idx[n, j]]`; padded slots must carry vals == 0."""
    if _dense(idx.shape[1], W_dec.shape[0]):
        dense = vals.new_zeros(vals.shape[0], W_dec.shape[0]).scatter_add(1, idx, vals)
        out = dense @ W_dec.to(dense.dtype)
        return out if b_dec is None else out + b_dec
    return kernels.sparse_decode(idx, vals, W_dec, b_dec)


def mask_like(mask: Tensor | None, vals: Tensor) -> Tensor | None:
    """A selection mask as a multiplier in `vals`'s dtype (None when nothing is padded)."""
    return None if mask is None else mask.to(vals.dtype)
