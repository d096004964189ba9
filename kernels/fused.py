"""The TopK encoder's matmul and selection in one call, without a fresh `[N, d_sae]` tensor.

`topk_preacts(x, W_enc, b_enc, k, cols)` returns what a TopK training step needs from the
dense pre-activations: each row's top-k values and latents, and (for AuxK) the columns
`cols` of the dead latents. The pre-activations themselves never leave the call: they are
written into a per-thread workspace that is reused from step to step.

What was measured on the 2-core CPU (fp32, N 4096, d_in 576, d_sae 18432, k 64; CPU time,
the machine shared with a long benchmark):
- A fresh `[4096, 18432]` product costs ~150 ms of page faults beside a ~650 ms sgemm when
  torch's allocator hands the 300 MB back to the system each call. The trainer already keeps
  freed memory (`sae/memory.py`); the workspace spares those faults everywhere else too
  (evaluations' `encode_sparse`, `encode_topk`) and keeps the product from escaping.
- Blocks small enough to stay in cache are not worth it in pure torch: row blocks of
  256-1024 rows made the sgemm 17-60% slower and the per-block top-k calls slower than one
  call (torch's top-k costs mostly per row and per call); column blocks would add a
  candidate merge, itself a top-k per row. Narrowing the chunked top-k's 2048 candidates
  further (a second level of chunk maxima, or a threshold and compaction) was slower than
  `torch.topk` over them. A compiled selection does better: where the native kernels are
  built (`native.py`), the product is a bare `mm` and the C selection adds the bias, finds
  each row's top-k and copies AuxK's columns in one read of the row (~2x the torch top-k,
  and no bias broadcast or `index_select` pass; `benchmarks/step_parts.py`).
- On a CPU with bf16 instructions, where `screen.pays(d_sae, k)`, there is no fp32 product at
  all: the workspace holds a bf16 product that screens the exact fp32 top-k
  (`screen.screened_topk`; 1.72x the fp32 product + native selection at d_sae 18432, k 64).
Rows are processed in blocks only when the product would exceed `WORKSPACE_BYTES` (bounding
the memory held between calls); rows are independent, so blocks change nothing but the
matmul's rounding (the same exact top-k as `topk_select` runs on each row).

CPU only, and one dtype for x, W_enc and b_enc: on CUDA the caching allocator already
reuses the memory and a fused Triton selection is future work, so other devices take the
unfused path (same results).
`SAELAB_DISABLE_FUSED=1` forces the unfused path everywhere (for before/after benchmarks).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor

from saelab.kernels import checks, native, screen
from saelab.kernels.dispatch import fused_enabled
from saelab.kernels.select import PositiveTop, positive_top, topk_select

WORKSPACE_BYTES = 1 << 30
"""Largest pre-activation block kept between calls (per thread); wider products go in row
blocks of at most this size."""

_LOCAL = threading.local()


def fused_available(device: torch.device | str) -> bool:
    """Whether `topk_preacts` fuses on `device` (CPU, unless disabled by environment)."""
    return torch.device(device).type == "cpu" and fused_enabled()


def release_workspace() -> None:
    """Free this thread's pre-activation workspace (it is rebuilt on the next call)."""
    _LOCAL.__dict__.pop("buffers", None)


def _workspace(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    buffers: dict = _LOCAL.__dict__.setdefault("buffers", {})
    key = (dtype, str(device))
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buffers[key] = buf = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


@torch.no_grad()
def topk_preacts(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor | None,
    k: int,
    cols: Tensor | None = None,
    block_bytes: int | None = None,
    cols_k: int = 0,
) -> tuple[Tensor, Tensor, Any]:
    """`(vals, idx, extra)` of `pre = x @ W_enc + b_enc` (no autograd): `vals, idx [N, k]` the
    k largest entries of each row (as `topk_select`, in no particular order) and
    `extra = pre[:, cols]` (None when `cols` is None), without returning `pre`. With
    `cols_k > 0`, `extra` is instead `positive_top(pre[:, cols], cols_k)` (a `PositiveTop` or
    None), which the native selection finds without forming `pre[:, cols]`.

    `W_enc` is `[d_in, d_sae]` (any layout; fastest as the transpose of a contiguous
    `[d_sae, d_in]` weight); `block_bytes` overrides `WORKSPACE_BYTES` (tests)."""
    op = "topk_preacts"
    checks.matrix(x, "x", op)
    checks.matrix(W_enc, "W_enc", op)
    if x.shape[1] != W_enc.shape[0]:
        raise ValueError(f"{op}: x has width {x.shape[1]} but W_enc is {tuple(W_enc.shape)}")
    checks.vector(b_enc, W_enc.shape[1], "b_enc", op)
    if cols is not None:
        checks.indices(cols.view(1, -1), 1, W_enc.shape[1], op)
    checks.same_device(op, x=x, W_enc=W_enc, b_enc=b_enc, cols=cols)
    n, d_sae = x.shape[0], W_enc.shape[1]
    x, W_enc = x.detach(), W_enc.detach()
    same = x.dtype == W_enc.dtype and (b_enc is None or b_enc.dtype == x.dtype)
    if not (same and fused_available(x.device)):
        pre = x @ W_enc if b_enc is None else torch.addmm(b_enc.detach(), x, W_enc)
        vals, idx = topk_select(pre, k)
        return vals, idx, _extra(pre, cols, cols_k)
    screened = x.dtype == torch.float32 and screen.pays(d_sae, k) and screen.available()
    dtype = torch.bfloat16 if screened else x.dtype
    limit = WORKSPACE_BYTES if block_bytes is None else block_bytes
    rows = max(1, min(n, limit // max(1, d_sae * dtype.itemsize)))
    buf = _workspace(rows * d_sae, dtype, x.device).view(rows, d_sae)
    block = _screened_block if screened else _block
    if rows >= n:
        return block(x, W_enc, b_enc, k, cols, cols_k, buf[:n])
    parts = [
        block(x[s : s + rows], W_enc, b_enc, k, cols, cols_k, buf[: min(rows, n - s)])
        for s in range(0, n, rows)
    ]
    vals, idx, extra = zip(*parts)
    sizes = [min(rows, n - s) for s in range(0, n, rows)]
    return torch.cat(vals), torch.cat(idx), _cat_extra(extra, sizes, cols, cols_k)


def _extra(pre: Tensor, cols: Tensor | None, cols_k: int) -> Any:
    if cols is None:
        return None
    dead = pre.index_select(1, cols)
    return positive_top(dead, cols_k) if cols_k > 0 else dead


def _cat_extra(parts: tuple, sizes: list[int], cols: Tensor | None, cols_k: int) -> Any:
    """The row blocks' `extra`s as one: a `PositiveTop` block is padded to the widest
    block's width, and a block without a positive entry (None) becomes padding rows."""
    if cols is None:
        return None
    if cols_k == 0:
        return torch.cat(parts)
    found = [p for p in parts if p is not None]
    if not found:
        return None
    width, dtype = max(p.idx.shape[1] for p in found), found[0].vals.dtype
    vals, idx = [], []
    for part, size in zip(parts, sizes):
        if part is None:
            vals.append(torch.zeros(size, width, dtype=dtype))
            idx.append(torch.zeros(size, width, dtype=torch.int64))
            continue
        pad = (0, width - part.idx.shape[1])
        vals.append(torch.nn.functional.pad(part.vals, pad))
        idx.append(torch.nn.functional.pad(part.idx, pad))
    return PositiveTop(torch.cat(vals), torch.cat(idx))


def _screened_block(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor | None,
    k: int,
    cols: Tensor | None,
    cols_k: int,
    product: Tensor,
) -> tuple[Tensor, Tensor, Any]:
    """`_block` through the bf16 screening product (`screen.py`): the same selection, the
    values computed as fp32 dot products, and AuxK's positive top (`cols_k > 0`) screened
    alike. Dense dead columns (`cols` with `cols_k == 0`) get an exact fp32 product of
    their own. Falls back to `_block` (an fp32 product in a fresh buffer) where the
    screening declines: a NaN or infinity."""
    bias = None if b_enc is None else b_enc.detach()
    found = screen.screened_topk(x, W_enc.t(), bias, k, product, cols, cols_k)
    if found is None:
        out = torch.empty(x.shape[0], W_enc.shape[1], dtype=x.dtype, device=x.device)
        return _block(x, W_enc, b_enc, k, cols, cols_k, out)
    vals, idx, aux = found
    if cols is None:
        return vals, idx, None
    if cols_k > 0:
        return vals, idx, PositiveTop.from_counts(*aux)
    dead = x @ W_enc.index_select(1, cols)
    if bias is not None:
        dead += bias[cols]
    return vals, idx, dead


def _block(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor | None,
    k: int,
    cols: Tensor | None,
    cols_k: int,
    out: Tensor,
) -> tuple[Tensor, Tensor, Any]:
    bias = None if b_enc is None else b_enc.detach()
    if native.library() is not None and x.dtype == torch.float32:
        # The bias joins inside the native selection, row by row in cache (`addmm` would
        # first broadcast it into the whole output: a full extra pass over [N, d_sae]), and
        # the dead latents' columns are read there too (only their positive top for AuxK).
        torch.mm(x, W_enc, out=out)
        found = native.topk_rows(out, k, bias, cols, cols_k)
        if found is not None:
            vals, idx, extra = found
            if cols is not None and cols_k > 0:
                extra = PositiveTop.from_counts(*extra)
            return vals, idx, extra
        if bias is not None:  # a NaN or infinity: torch's selection below ranks them
            out += bias
    elif bias is None:
        torch.mm(x, W_enc, out=out)
    else:
        torch.addmm(bias, x, W_enc, out=out)
    vals, idx = topk_select(out, k)
    return vals, idx, _extra(out, cols, cols_k)
