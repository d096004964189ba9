"""The three sparse primitives (see `torch_ops`) as Triton kernels, for CUDA tensors.

- `weighted_rows`: one program per (token row, d-block) sums its k weighted table rows,
  BLOCK_K rows per step as one [BLOCK_K, BLOCK_D] tile (several row loads in flight).
- `gather_dot`: one program per (token row, k-block) reduces a[n] · table[idx] over d.
- `scatter_rows`: entries are sorted by latent once (`torch_ops.segment_plan`), then one
  program per (latent, d-block) sums its segment in [BLOCK_E, BLOCK_D] tiles: a
  sort-and-segment reduction, no atomics; latents nobody selected get zeros without reading
  anything, and zero-weight (padded) entries are skipped.

Tables are addressed through both strides, so the transpose view of a contiguous
`[d_in, d_sae]` encoder works without a copy (slower, uncoalesced, but correct).
Offsets are int64 (N · d may pass 2^31). Accumulation is fp32 whatever the storage dtype.
Under `TRITON_INTERPRET=1` the same kernels run on CPU tensors; the test suite checks them
that way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from saelab.kernels.torch_ops import segment_plan

BLOCK_D = 128
BLOCK_K = 16
BLOCK_E = 16


@triton.jit
def _weighted_rows_kernel(
    idx_ptr,
    vals_ptr,
    table_ptr,
    out_ptr,
    K,
    D,
    stride_tr,
    stride_tc,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        rows = tl.load(idx_ptr + n * K + ks, mask=kmask, other=0)
        v = tl.load(vals_ptr + n * K + ks, mask=kmask, other=0.0).to(tl.float32)
        w = tl.load(
            table_ptr + rows[:, None] * stride_tr + offs[None, :] * stride_tc,
            mask=kmask[:, None] & dmask[None, :],
            other=0.0,
        )
        acc += tl.sum(w.to(tl.float32) * v[:, None], axis=0)
    tl.store(out_ptr + n * D + offs, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _gather_dot_kernel(
    idx_ptr,
    a_ptr,
    table_ptr,
    out_ptr,
    K,
    D,
    stride_a,
    stride_tr,
    stride_tc,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    rows = tl.load(idx_ptr + n * K + ks, mask=kmask, other=0)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        dmask = offs < D
        a = tl.load(a_ptr + n * stride_a + offs, mask=dmask, other=0.0).to(tl.float32)
        w = tl.load(
            table_ptr + rows[:, None] * stride_tr + offs[None, :] * stride_tc,
            mask=kmask[:, None] & dmask[None, :],
            other=0.0,
        )
        acc += tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    tl.store(out_ptr + n * K + ks, acc.to(out_ptr.dtype.element_ty), mask=kmask)


@triton.jit
def _segment_rows_kernel(
    starts_ptr,
    owner_ptr,
    weight_ptr,
    a_ptr,
    out_ptr,
    D,
    stride_a,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs < D
    start = tl.load(starts_ptr + r)
    stop = tl.load(starts_ptr + r + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for e0 in range(start, stop, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        emask = es < stop
        owner = tl.load(owner_ptr + es, mask=emask, other=0)
        w = tl.load(weight_ptr + es, mask=emask, other=0.0).to(tl.float32)
        tile = tl.load(
            a_ptr + owner[:, None] * stride_a + offs[None, :],
            mask=emask[:, None] & dmask[None, :],
            other=0.0,
        )
        acc += tl.sum(tile.to(tl.float32) * w[:, None], axis=0)
    tl.store(out_ptr + r * D + offs, acc.to(out_ptr.dtype.element_ty), mask=dmask)


def _rows_unit_stride(t: Tensor) -> Tensor:
    """`t` itself when its last dimension is unit-stride, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def weighted_rows(idx: Tensor, vals: Tensor, table: Tensor) -> Tensor:
    n, k = idx.shape
    d = table.shape[1]
    out = torch.empty(n, d, dtype=table.dtype, device=table.device)
    if n and d:
        _weighted_rows_kernel[(n, triton.cdiv(d, BLOCK_D))](
            idx.contiguous(),
            vals.contiguous(),
            table,
            out,
            k,
            d,
            table.stride(0),
            table.stride(1),
            BLOCK_K=BLOCK_K,
            BLOCK_D=BLOCK_D,
        )
    return out


def gather_dot(idx: Tensor, a: Tensor, table: Tensor) -> Tensor:
    n, k = idx.shape
    d = table.shape[1]
    a = _rows_unit_stride(a)
    out = torch.empty(n, k, dtype=a.dtype, device=a.device)
    if n and k:
        _gather_dot_kernel[(n, triton.cdiv(k, BLOCK_K))](
            idx.contiguous(),
            a,
            table,
            out,
            k,
            d,
            a.stride(0),
            table.stride(0),
            table.stride(1),
            BLOCK_K=BLOCK_K,
            BLOCK_D=BLOCK_D,
        )
    return out


def scatter_rows(idx: Tensor, vals: Tensor, a: Tensor, n_rows: int, shared=None) -> Tensor:
    """(`shared`, torch_ops' shared sort, is not used here: the sort is not the cost on GPU.)"""
    d = a.shape[1]
    a = _rows_unit_stride(a)
    out = torch.empty(n_rows, d, dtype=a.dtype, device=a.device)
    if n_rows and d:
        owner, weight, starts = segment_plan(idx, vals, n_rows)
        _segment_rows_kernel[(n_rows, triton.cdiv(d, BLOCK_D))](
            starts,
            owner,
            weight.contiguous(),
            a,
            out,
            d,
            a.stride(0),
            BLOCK_E=BLOCK_E,
            BLOCK_D=BLOCK_D,
        )
    return out


def decode_grads(idx: Tensor, vals: Tensor, grad_out: Tensor, W_dec: Tensor, shared=None):
    """`(gather_dot(idx, grad_out, W_dec), scatter_rows(idx, vals, grad_out, d_sae))`."""
    return gather_dot(idx, grad_out, W_dec), scatter_rows(idx, vals, grad_out, W_dec.shape[0])
