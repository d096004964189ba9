"""Fused sparse encode/decode ops for SAEs: Triton on CUDA, torch everywhere else.

    sparse_decode(idx, vals, W_dec, b_dec)      out[n] = b_dec + Σ_j vals[n,j] W_dec[idx[n,j]]
    gather_preacts(x, W_enc, b_enc, idx, pre)   (x @ W_enc + b_enc) at idx, sparse backward
    encode_topk(x, W_enc, b_enc, k)             the TopK encoder: (vals, idx), differentiable
    topk_select / threshold_select / batch_topk_select   selections (padded layout for variable k)
    backend(device)                             "triton" or "torch"

Imports nothing from the rest of saelab. Bad input raises ValueError.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.autograd import GatherPreacts, SparseDecode
from kernels.dispatch import backend
from kernels.select import batch_topk_select, pad_active, threshold_select, topk_select

__all__ = [
    "backend",
    "batch_topk_select",
    "encode_topk",
    "gather_preacts",
    "pad_active",
    "sparse_decode",
    "threshold_select",
    "topk_select",
]


def _check_idx(idx: Tensor, n: int, n_latents: int, name: str) -> None:
    if idx.dim() != 2 or idx.shape[0] != n:
        raise ValueError(f"{name}: idx must be [N, k] with N={n}, got {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_latents):
        raise ValueError(f"{name}: idx holds latents outside 0..{n_latents - 1}")


def sparse_decode(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """`[N, d_in]` reconstruction from k active latents per row (padded slots: vals 0)."""
    if vals.shape != idx.shape:
        raise ValueError(
            f"sparse_decode: vals {tuple(vals.shape)} and idx {tuple(idx.shape)} differ"
        )
    _check_idx(idx, idx.shape[0], W_dec.shape[0], "sparse_decode")
    return SparseDecode.apply(idx.long().contiguous(), vals.contiguous(), W_dec, b_dec)


def gather_preacts(
    x: Tensor, W_enc: Tensor, b_enc: Tensor | None, idx: Tensor, pre: Tensor | None = None
) -> Tensor:
    """Pre-activations `(x @ W_enc + b_enc)[n, idx[n, j]]`; W_enc is `[d_in, d_sae]`, ideally the
    transpose view of a contiguous `[d_sae, d_in]` parameter. `pre`, the same dense product
    already computed for the selection, saves recomputing it (it gets no gradient)."""
    if x.shape[1] != W_enc.shape[0]:
        raise ValueError(
            f"gather_preacts: x has width {x.shape[1]} but W_enc is {tuple(W_enc.shape)}"
        )
    _check_idx(idx, x.shape[0], W_enc.shape[1], "gather_preacts")
    return GatherPreacts.apply(
        x, W_enc.t(), b_enc, idx.long().contiguous(), None if pre is None else pre.detach()
    )


def encode_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
    """TopK encoder: ReLU of the k largest pre-activations per row, `(vals, idx)`.

    The dense pre-activations are computed once without autograd (the selection needs them)
    and freed before backward; only the `[N, k]` values carry gradient."""
    with torch.no_grad():
        pre = x @ W_enc if b_enc is None else torch.addmm(b_enc, x, W_enc)
        _, idx = topk_select(pre, k)
    vals = gather_preacts(x, W_enc, b_enc, idx, pre=pre)
    return torch.relu(vals), idx
