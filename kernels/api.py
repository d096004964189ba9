"""The public kernel functions (re-exported by `saelab.kernels`); see the package's docstring."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels import checks
from saelab.kernels.autograd import BandedDecode, DecodeProbe, GatherPreacts, SparseDecode
from saelab.kernels.dispatch import backend
from saelab.kernels.fused import topk_preacts
from saelab.kernels.torch_ops import SharedSegments


def shared_segments(idx: Tensor, n_rows: int) -> SharedSegments:
    """A sort of `idx [N, k]` (no padding) by latent, for `sparse_decode` and
    `gather_preacts` over the same selection to share: pass it as their `shared` and the
    backward sorts the entries once instead of once per weight gradient. The sort runs on
    first use; zero-weight entries are kept (they add 0), so do not share it over a padded
    selection. Ignored by the Triton backend."""
    checks.indices(idx, idx.shape[0], n_rows, "shared_segments")
    return SharedSegments(idx.long().contiguous(), n_rows)


def sparse_decode(
    idx: Tensor,
    vals: Tensor,
    W_dec: Tensor,
    b_dec: Tensor | None = None,
    shared: SharedSegments | None = None,
) -> Tensor:
    """`[N, d_in]` reconstruction `b_dec + Σ_j vals[n, j] · W_dec[idx[n, j]]`.

    `idx`, `vals`: `[N, k]` (padded slots: any valid idx, vals 0); `W_dec`: `[d_sae, d_in]`.
    Differentiable w.r.t. vals (a gather-dot), W_dec (only selected rows are non-zero) and
    b_dec. The output has W_dec's dtype. `shared`: see `shared_segments`."""
    op = "sparse_decode"
    checks.matrix(W_dec, "W_dec", op)
    checks.matrix(vals, "vals", op)
    checks.indices(idx, vals.shape[0], W_dec.shape[0], op)
    if vals.shape != idx.shape:
        raise ValueError(f"{op}: vals {tuple(vals.shape)} and idx {tuple(idx.shape)} differ")
    checks.vector(b_dec, W_dec.shape[1], "b_dec", op)
    checks.same_device(op, idx=idx, vals=vals, W_dec=W_dec, b_dec=b_dec)
    idx = _shared_idx(idx, shared)
    return SparseDecode.apply(idx, vals.contiguous(), W_dec, b_dec, shared)


def _shared_idx(idx: Tensor, shared: SharedSegments | None) -> Tensor:
    """`idx` as long and contiguous: the plan's own tensor when `shared` was made from it
    (so the backward recognises the sort as its own)."""
    if shared is not None and tuple(idx.shape) == tuple(shared.idx.shape):
        same = idx is shared.idx or idx.long().contiguous().data_ptr() == shared.idx.data_ptr()
        if same or torch.equal(idx.long(), shared.idx):
            return shared.idx
    return idx.long().contiguous()


def decode_probe(idx: Tensor, vals: Tensor, W_dec: Tensor, mask: Tensor | None = None) -> Tensor:
    """Zeros `[N, d_in]` (W_dec's dtype) that give `vals` the gradient `sparse_decode` would,
    at the entries `mask` keeps (all when None; 0 elsewhere): add it to a reconstruction to
    train entries that are exactly 0 in the forward (only a gather-dot over the kept entries
    in the backward, no decode, no W_dec gradient)."""
    op = "decode_probe"
    checks.matrix(W_dec, "W_dec", op)
    checks.matrix(vals, "vals", op)
    checks.indices(idx, vals.shape[0], W_dec.shape[0], op)
    if vals.shape != idx.shape or (mask is not None and mask.shape != idx.shape):
        raise ValueError(f"{op}: vals {tuple(vals.shape)}, idx and mask must have one shape")
    checks.same_device(op, idx=idx, vals=vals, W_dec=W_dec, mask=mask)
    if mask is None:
        mask = torch.ones(idx.shape, dtype=torch.bool, device=idx.device)
    return DecodeProbe.apply(idx.long().contiguous(), vals, W_dec.detach(), mask.bool())


def banded_decode(idx: Tensor, vals: Tensor, W_dec: Tensor, bounds: list[int]) -> Tensor:
    """`[N, L, d_in]` parts of `sparse_decode` (no bias) by latent band: part l sums the
    entries with `bounds[l-1] <= idx < bounds[l]` (`bounds[-1]` = d_sae, increasing).

    One pass over the entries whatever L (the bands of a row are bags of one `embedding_bag`),
    so `parts.cumsum(1)` gives every nested prefix's reconstruction for one decode's work.
    Differentiable w.r.t. vals and W_dec like `sparse_decode`."""
    op = "banded_decode"
    checks.matrix(W_dec, "W_dec", op)
    checks.matrix(vals, "vals", op)
    checks.indices(idx, vals.shape[0], W_dec.shape[0], op)
    if vals.shape != idx.shape:
        raise ValueError(f"{op}: vals {tuple(vals.shape)} and idx {tuple(idx.shape)} differ")
    checks.same_device(op, idx=idx, vals=vals, W_dec=W_dec)
    bounds = [int(b) for b in bounds]
    if (
        not bounds
        or bounds[-1] != W_dec.shape[0]
        or any(a >= b for a, b in zip(bounds, bounds[1:]))
    ):
        raise ValueError(f"{op}: bounds must increase to d_sae = {W_dec.shape[0]}, got {bounds}")
    idx = idx.long().contiguous()
    if backend(W_dec.device) == "torch":
        edges = torch.tensor(bounds, dtype=torch.long, device=idx.device)
        return BandedDecode.apply(idx, vals.contiguous(), W_dec, edges)
    parts, lower = [], 0
    for upper in bounds:
        band = ((idx >= lower) & (idx < upper)).to(vals.dtype)
        parts.append(SparseDecode.apply(idx, (vals * band).contiguous(), W_dec, None))
        lower = upper
    return torch.stack(parts, 1)


def gather_preacts(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor | None,
    idx: Tensor,
    pre: Tensor | None = None,
    shift: Tensor | None = None,
    values: Tensor | None = None,
    shared: SharedSegments | None = None,
) -> Tensor:
    """Pre-activations `((x − shift) @ W_enc + b_enc)[n, idx[n, j]]`, `[N, k]`.

    `W_enc` is `[d_in, d_sae]`; fastest as the transpose view of a contiguous `[d_sae, d_in]`
    parameter (latent rows contiguous), any layout works. Backward: grad x is a gather of the
    selected encoder rows, grad W_enc / b_enc are non-zero only at selected latents (built by
    a sort-and-segment reduction, never from a dense `[N, d_sae]` gradient); grad W_enc has
    W_enc's shape. `pre`, the same dense product already computed (no grad) for the
    selection, spares recomputing the selected values; it must include the same bias (and
    the same shift). `shift [d_in]`, optional, is subtracted from every row (a centring SAE's
    b_dec); its gradient comes from a matrix-vector product, so pass it rather than a centred
    `x` when it is trained. `values [N, k]`, the selected pre-activations themselves (as
    `topk_preacts` returns them), spares even the gather from `pre`. `shared`: see
    `shared_segments`."""
    op = "gather_preacts"
    checks.matrix(x, "x", op)
    checks.matrix(W_enc, "W_enc", op)
    if x.shape[1] != W_enc.shape[0]:
        raise ValueError(f"{op}: x has width {x.shape[1]} but W_enc is {tuple(W_enc.shape)}")
    checks.indices(idx, x.shape[0], W_enc.shape[1], op)
    checks.vector(b_enc, W_enc.shape[1], "b_enc", op)
    checks.vector(shift, x.shape[1], "shift", op)
    if pre is not None and tuple(pre.shape) != (x.shape[0], W_enc.shape[1]):
        raise ValueError(
            f"{op}: pre must be [N, d_sae] = {(x.shape[0], W_enc.shape[1])}, got {tuple(pre.shape)}"
        )
    if values is not None and values.shape != idx.shape:
        raise ValueError(
            f"{op}: values {tuple(values.shape)} and idx {tuple(idx.shape)} must have one shape"
        )
    checks.same_device(
        op, x=x, W_enc=W_enc, b_enc=b_enc, idx=idx, pre=pre, shift=shift, values=values
    )
    return GatherPreacts.apply(
        x,
        shift,
        _encoder_rows(W_enc),
        b_enc,
        _shared_idx(idx, shared),
        None if pre is None else pre.detach(),
        None if values is None else values.detach(),
        shared,
    )


def _encoder_rows(W_enc: Tensor) -> Tensor:
    """`W_enc.t()`; when `W_enc` is itself the transpose view of a contiguous `[d_sae, d_in]`
    tensor (the SAEs' `encoder_weight.t()`), that tensor, so that autograd hands the gradient
    to it directly instead of through two transpose nodes (and their views)."""
    base = W_enc._base
    if (
        base is not None
        and base.dim() == 2
        and base.is_contiguous()
        and base.requires_grad == W_enc.requires_grad
        and tuple(base.shape) == tuple(W_enc.shape[::-1])
        and W_enc.stride() == base.t().stride()
        and W_enc.data_ptr() == base.data_ptr()
    ):
        return base
    return W_enc.t()


def encode_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
    """TopK encoder: `(vals, idx)`, each `[N, k]`, vals = ReLU of the k largest pre-activations.

    The dense pre-activations are computed once without autograd (`topk_preacts`: on CPU in
    a reused workspace) and never returned; only `[N, k]` values carry gradient, so nothing
    `[N, d_sae]` is kept for backward. (Top-k of the raw pre-activations picks the same latents as top-k of
    their ReLU, up to ties among values that ReLU makes 0 anyway.)"""
    checks.matrix(x, "x", "encode_topk")
    checks.matrix(W_enc, "W_enc", "encode_topk")
    if x.shape[1] != W_enc.shape[0]:
        raise ValueError(f"encode_topk: x has width {x.shape[1]} but W_enc is {tuple(W_enc.shape)}")
    checks.vector(b_enc, W_enc.shape[1], "b_enc", "encode_topk")
    sel, idx, _ = topk_preacts(x, W_enc, b_enc, k)
    vals = gather_preacts(x, W_enc, b_enc, idx, values=sel)
    return torch.relu(vals), idx
