"""The three sparse primitives (see `torch_ops`) as Triton kernels, for CUDA tensors.

- `weighted_rows`: one program per (row, d-block) accumulates its k weighted table rows.
- `gather_dot`: one program per (row, k-block) reduces a[n] · table[idx] over d in blocks.
- `scatter_rows`: entries are sorted by latent once (torch), then one program per
  (latent, d-block) sums its segment: a sort-and-segment reduction, no atomics, and latents
  that nobody selected get zeros without reading anything.
Accumulation is in float32 whatever the storage dtype. Under `TRITON_INTERPRET=1` the same
kernels run on CPU tensors, which is how the test suite checks them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_D = 64
BLOCK_K = 16


@triton.jit
def _weighted_rows_kernel(idx_ptr, vals_ptr, table_ptr, out_ptr, K, D, BLOCK_D: tl.constexpr):
    n = tl.program_id(0)
    dblock = tl.program_id(1)
    offs = dblock * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in range(K):
        row = tl.load(idx_ptr + n * K + j)
        v = tl.load(vals_ptr + n * K + j).to(tl.float32)
        w = tl.load(table_ptr + row * D + offs, mask=dmask, other=0.0).to(tl.float32)
        acc += v * w
    tl.store(out_ptr + n * D + offs, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _gather_dot_kernel(
    idx_ptr, a_ptr, table_ptr, out_ptr, K, D, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr
):
    n = tl.program_id(0)
    kblock = tl.program_id(1)
    ks = kblock * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    rows = tl.load(idx_ptr + n * K + ks, mask=kmask, other=0)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        dmask = offs < D
        a = tl.load(a_ptr + n * D + offs, mask=dmask, other=0.0).to(tl.float32)
        w = tl.load(
            table_ptr + rows[:, None] * D + offs[None, :],
            mask=kmask[:, None] & dmask[None, :],
            other=0.0,
        )
        acc += tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    tl.store(out_ptr + n * K + ks, acc.to(out_ptr.dtype.element_ty), mask=kmask)


@triton.jit
def _segment_rows_kernel(
    starts_ptr, owner_ptr, weight_ptr, a_ptr, out_ptr, D, BLOCK_D: tl.constexpr
):
    r = tl.program_id(0)
    dblock = tl.program_id(1)
    offs = dblock * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs < D
    start = tl.load(starts_ptr + r)
    stop = tl.load(starts_ptr + r + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for e in range(start, stop):
        n = tl.load(owner_ptr + e)
        v = tl.load(weight_ptr + e).to(tl.float32)
        acc += v * tl.load(a_ptr + n * D + offs, mask=dmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * D + offs, acc.to(out_ptr.dtype.element_ty), mask=dmask)


def weighted_rows(idx: Tensor, vals: Tensor, table: Tensor) -> Tensor:
    n, k = idx.shape
    d = table.shape[1]
    table, vals = table.contiguous(), vals.contiguous()
    out = torch.empty(n, d, dtype=table.dtype, device=table.device)
    if n:
        _weighted_rows_kernel[(n, triton.cdiv(d, BLOCK_D))](
            idx.contiguous(), vals, table, out, k, d, BLOCK_D=BLOCK_D
        )
    return out


def gather_dot(idx: Tensor, a: Tensor, table: Tensor) -> Tensor:
    n, k = idx.shape
    d = table.shape[1]
    out = torch.empty(n, k, dtype=a.dtype, device=a.device)
    if n and k:
        grid = (n, triton.cdiv(k, BLOCK_K))
        _gather_dot_kernel[grid](
            idx.contiguous(),
            a.contiguous(),
            table.contiguous(),
            out,
            k,
            d,
            BLOCK_K=BLOCK_K,
            BLOCK_D=BLOCK_D,
        )
    return out


def scatter_rows(idx: Tensor, vals: Tensor, a: Tensor, n_rows: int) -> Tensor:
    n, k = idx.shape
    d = a.shape[1]
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    owner = torch.div(order, k, rounding_mode="floor").contiguous()
    weights = vals.reshape(-1)[order].contiguous()
    starts = torch.zeros(n_rows + 1, dtype=torch.long, device=idx.device)
    starts[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    out = torch.empty(n_rows, d, dtype=a.dtype, device=a.device)
    if n_rows:
        _segment_rows_kernel[(n_rows, triton.cdiv(d, BLOCK_D))](
            starts, owner, weights, a.contiguous(), out, d, BLOCK_D=BLOCK_D
        )
    return out
