"""Dense references: what the sparse ops compute, the slow and obvious way.

Used by the tests (in float64) and as the dense baseline of the benchmarks.
"""

from __future__ import annotations

from torch import Tensor


def dense_codes(idx: Tensor, vals: Tensor, d_sae: int) -> Tensor:
    """The `[N, d_sae]` matrix with vals[n, j] at column idx[n, j] (duplicates add)."""
    return vals.new_zeros(idx.shape[0], d_sae).scatter_add(1, idx, vals)


def dense_decode(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    out = dense_codes(idx, vals, W_dec.shape[0]) @ W_dec
    return out if b_dec is None else out + b_dec


def dense_preacts(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor | None,
    idx: Tensor,
    pre: Tensor | None = None,
    shift: Tensor | None = None,
) -> Tensor:
    """`((x − shift) @ W_enc + b_enc)` at idx; `pre` is accepted and ignored (recomputed)."""
    pre = (x if shift is None else x - shift) @ W_enc
    if b_enc is not None:
        pre = pre + b_enc
    return pre.gather(1, idx)
