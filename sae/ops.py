"""The one place the SAEs call `kernels/`.

Every architecture selects its active latents on pre-activations computed without autograd,
then recomputes only the selected values differentiably (`gather`) and decodes sparsely
(`decode`). When a selection is so dense (early ReLU or Gated training: half the latents
fire) that the sparse kernels would cost more than a dense matmul, the same arithmetic runs
densely here; results are equal up to float rounding.

`kernels` is looked up at call time so a test may stand in for a missing function.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from saelab import kernels
from saelab.kernels.select import PositiveTop
from saelab.kernels.select import positive_top as positive_top_

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


def topk_preacts(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor | None,
    k: int,
    cols: Tensor | None = None,
    cols_k: int = 0,
) -> tuple[Tensor, Tensor, Any]:
    """`preacts` and `topk` in one call that never returns the dense product (on CPU it is
    written into a reused workspace): `(vals, idx, pre[:, cols])`, no autograd; with
    `cols_k > 0`, `positive_top(pre[:, cols], cols_k)` in place of `pre[:, cols]`."""
    return kernels.topk_preacts(x.detach(), W_enc, b_enc, k, cols, cols_k=cols_k)


def positive_top(cols: Tensor, k: int) -> PositiveTop | None:
    """Each row's largest positive entries of `cols [N, c]`, at most k (see `PositiveTop`)."""
    return positive_top_(cols, k)


def shared_segments(idx: Tensor, d_sae: int) -> object | None:
    """One sort of a TopK selection (no padding) for the backward scatters of `gather` and
    `decode` over it to share (None where the sparse kernels are not used)."""
    if _dense(idx.shape[1], d_sae):
        return None
    return kernels.shared_segments(idx, d_sae)


@torch.no_grad()
def project_out_rows_(grad: Tensor, w: Tensor) -> None:
    """`grad[r] -= (grad[r] · w[r]) w[r]` in place: each row's component along `w[r]` removed
    (one pass in the native kernel where it applies)."""
    if not kernels.project_rows_(grad, w):
        grad -= (grad * w).sum(1, keepdim=True) * w


@torch.no_grad()
def normalize_rows_(w: Tensor, eps: float = 1e-12) -> None:
    """`w[r] /= max(‖w[r]‖, eps)` in place (one pass in the native kernel where it applies)."""
    if not kernels.normalize_rows_(w, eps):
        w /= w.norm(dim=1, keepdim=True).clamp_min(eps)


def rows(weight: Tensor, idx: Tensor) -> Tensor:
    """`weight[idx]` (rows of a parameter, `idx` sorted and unique) whose backward is a
    row-sparse gradient: accumulating it touches only those rows of `weight.grad`, where
    autograd's indexing would fill and add a whole zero tensor of `weight`'s size (AuxK over
    a few thousand dead latents of 18432: two 42 MB passes per weight per step). The
    trainer's gradients stay dense: the parameter's main gradient is dense, and a sparse one
    left alone is made dense before the optimizer (`dense_grads_`)."""
    return _Rows.apply(weight, idx)


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.shape = weight.shape
        return weight.index_select(0, idx)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        sparse = torch.sparse_coo_tensor(
            idx.unsqueeze(0),
            grad.contiguous(),
            ctx.shape,
            is_coalesced=True,
            check_invariants=False,
        )
        return sparse, None


def dense_grads_(params) -> None:
    """Make every sparse `.grad` of `params` dense in place (a parameter whose only gradient
    came through `rows`); the optimizers and the decoder's projection need dense ones."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()


def topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-row top-k: `(vals, idx)`, no autograd."""
    return kernels.topk_select(pre, k)


def threshold(pre: Tensor, thresh: Tensor | float) -> tuple[Tensor, Tensor]:
    """Entries above a (per-latent or scalar) threshold, padded: `(idx, mask)`."""
    return kernels.threshold_select(pre, thresh)


def split(idx: Tensor, mask: Tensor, first: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
    """A padded selection's entries where `first` holds, and the rest: two `(idx, mask)`."""
    return kernels.split_selection(idx, mask, first)


def batch_topk(pre: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """The top k * rows entries of the whole batch, padded per row: `(idx, mask)`."""
    return kernels.batch_topk_select(pre, k)


def column_topk(pre: Tensor, m: int | Tensor) -> tuple[Tensor, Tensor]:
    """Each latent (column) keeps its `m` largest entries over the batch's rows (`m` an int,
    or a long `[d_sae]` of per-latent counts), padded per row: `(idx, mask)`, no autograd."""
    with torch.no_grad():
        n, d_sae = pre.shape
        counts = torch.as_tensor(m, device=pre.device).clamp(0, n).expand(d_sae)
        top = int(counts.max()) if d_sae else 0
        active = torch.zeros_like(pre, dtype=torch.bool)
        if top > 0:
            rows = pre.topk(top, dim=0).indices  # [top, d_sae], largest first
            keep = torch.arange(top, device=pre.device)[:, None] < counts[None, :]
            active.scatter_(0, rows, keep)
        return kernels.pad_active(active)


def gather(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor | None,
    idx: Tensor,
    pre: Tensor | None = None,
    shift: Tensor | None = None,
    values: Tensor | None = None,
    shared: object | None = None,
) -> Tensor:
    """Differentiable pre-activations of `x − shift` at `idx` ([N, k]); sparse backward to
    W_enc (and to `shift`, the `b_dec` a centring SAE subtracts from its input).
    `values`, those pre-activations already computed without grad (`topk_preacts`), spare
    the forward's work; `shared` is `shared_segments` of `idx`.

    `pre`, the no-grad `preacts` of `x − shift` already computed for the selection (same
    bias), spares recomputing the selected values (on the dense path, the whole encoder
    matmul). Passing `shift` rather than a centred `x` lets both paths get shift's gradient
    from a matrix-vector product instead of a whole `[N, d_in]` input gradient."""
    if _dense(idx.shape[1], W_enc.shape[1]):
        if values is None:
            if pre is None:
                pre = preacts(x if shift is None else x - shift, W_enc, b_enc)
            values = pre.detach().gather(1, idx)
        return _DenseGather.apply(x, shift, W_enc.t(), b_enc, idx, values.detach())
    return kernels.gather_preacts(
        x, W_enc, b_enc, idx, pre=pre, shift=shift, values=values, shared=shared
    )


class _DenseGather(torch.autograd.Function):
    """`values` (the no-grad pre-activations at `idx`) with the gradient of
    `(x − shift) @ W_rows.T + b_enc` at `idx`.

    The forward reuses the no-grad values; the backward scatters the incoming
    gradient into a dense `[N, d_sae]` buffer G (duplicate slots add up, as in `gather`'s own
    backward) and runs only the products asked for: G.T (x − shift) for W, G W for x, and
    −(Σ_n G[n]) W, a matrix-vector product, for shift."""

    @staticmethod
    def forward(ctx, x, shift, W_rows, b_enc, idx, values):
        ctx.save_for_backward(x, shift, W_rows, idx)
        ctx.bias_dtype = None if b_enc is None else b_enc.dtype
        return values.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, shift, W_rows, idx = ctx.saved_tensors
        acc = torch.promote_types(grad.dtype, W_rows.dtype)
        full = torch.zeros(grad.shape[0], W_rows.shape[0], dtype=acc, device=grad.device)
        full.scatter_add_(1, idx, grad.to(acc))
        w = W_rows.to(acc)
        grad_x = grad_shift = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (full @ w).to(x.dtype)
        if ctx.needs_input_grad[2]:
            xc = x if shift is None else x - shift
            grad_w = (full.t() @ xc.to(acc)).to(W_rows.dtype)
        col = full.sum(0) if ctx.needs_input_grad[1] or ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[1]:
            grad_shift = -(col @ w).to(shift.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            grad_b = col.to(ctx.bias_dtype)
        return grad_x, grad_shift, grad_w, grad_b, None, None


def decode(
    idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None, shared: object | None = None
) -> Tensor:
    """`b_dec + sum_j vals[n, j] W_dec[idx[n, j]]`; padded slots must carry vals == 0.
    `shared`: `shared_segments` of `idx` (one backward sort for `gather` and `decode`)."""
    if _dense(idx.shape[1], W_dec.shape[0]):
        dense = vals.new_zeros(vals.shape[0], W_dec.shape[0]).scatter_add(1, idx, vals)
        out = dense @ W_dec.to(dense.dtype)
        return out if b_dec is None else out + b_dec
    return kernels.sparse_decode(idx, vals, W_dec, b_dec, shared)


def probe(idx: Tensor, vals: Tensor, W_dec: Tensor, mask: Tensor | None = None) -> Tensor:
    """Zeros `[N, d_in]` that give `vals` (entries 0 in the forward) the gradient `decode`
    would, at the entries `mask` keeps; add to a reconstruction. Dense selections get it
    from one matmul, for every entry (callers zero padded slots through their vals)."""
    if _dense(idx.shape[1], W_dec.shape[0]):
        return _DenseProbe.apply(idx, vals, W_dec.detach())
    return kernels.decode_probe(idx, vals, W_dec, mask)


class _DenseProbe(torch.autograd.Function):
    """`probe` for wide selections: grad vals = (grad_out @ W_dec.T) at idx."""

    @staticmethod
    def forward(ctx, idx, vals, W_dec):
        ctx.save_for_backward(idx, W_dec)
        return W_dec.new_zeros(idx.shape[0], W_dec.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        idx, W_dec = ctx.saved_tensors
        return None, (grad @ W_dec.t().to(grad.dtype)).gather(1, idx), None


def decode_bands(idx: Tensor, vals: Tensor, W_dec: Tensor, bounds: list[int]) -> Tensor:
    """`decode` without bias split by latent band: `[N, L, d_in]`, part l from the latents in
    `bounds[l-1] <= i < bounds[l]`; the whole split costs one decode."""
    if _dense(idx.shape[1], W_dec.shape[0]):
        dense = vals.new_zeros(vals.shape[0], W_dec.shape[0]).scatter_add(1, idx, vals)
        w = W_dec.to(dense.dtype)
        parts, lower = [], 0
        for upper in bounds:
            parts.append(dense[:, lower:upper] @ w[lower:upper])
            lower = upper
        return torch.stack(parts, 1)
    return kernels.banded_decode(idx, vals, W_dec, bounds)


def bag_sums(idx: Tensor, weights: Tensor, crow: Tensor, table: Tensor) -> Tensor:
    """Entry lists in CSR form (bag b holds entries `crow[b]:crow[b + 1]`, each a row
    `idx[e]` of `table` with a weight): each bag's weighted sum of its rows, `[bags, d]`,
    no `[entries, d]` temporary. No autograd."""
    return kernels.torch_ops.banded_rows(idx, weights, crow, table)


def bag_dots(idx: Tensor, crow: Tensor, a: Tensor, table: Tensor) -> Tensor:
    """For each entry e of bag b (as in `bag_sums`): `a[b] · table[idx[e]]`, `[entries]`."""
    return kernels.torch_ops.banded_dot(idx, crow, a, table)


def bag_scatter(idx: Tensor, weights: Tensor, crow: Tensor, a: Tensor, n_rows: int) -> Tensor:
    """The transpose of `bag_sums`: `out[r] = Σ_{e: idx[e] = r} weights[e] · a[bag of e]`,
    `[n_rows, d]` (zero-weight entries skipped)."""
    return kernels.torch_ops.banded_scatter(idx, weights, crow, a, n_rows)


def mask_like(mask: Tensor | None, vals: Tensor) -> Tensor | None:
    """A selection mask as a multiplier in `vals`'s dtype (None when nothing is padded)."""
    return None if mask is None else mask.to(vals.dtype)
