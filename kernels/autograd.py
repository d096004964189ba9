"""Autograd for the sparse decoder and the sparse encoder gather.

Both backward passes touch only the selected latents: the gradient buffers of W_dec and of
the encoder are written by `scatter_rows` (a sort-and-segment reduction), and no dense
`[N, d_sae]` tensor is built or saved. Padded slots (vals 0, or a zero incoming gradient)
are skipped by that reduction (unless a `SharedSegments` sort is passed: then one sort of
the selection serves both the encoder's and the decoder's scatter, zero weights included).
First-order gradients only (no double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from saelab.kernels.dispatch import ops_for


class SparseDecode(torch.autograd.Function):
    """out[n] = b_dec + Σ_j vals[n, j] · W_dec[idx[n, j]]."""

    @staticmethod
    def forward(
        ctx, idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None, shared=None
    ) -> Tensor:
        ops = ops_for(W_dec.device)
        out = ops.weighted_rows(idx, vals, W_dec)
        if b_dec is not None:
            out = out + b_dec
        ctx.save_for_backward(idx, vals, W_dec)
        ctx.has_bias = b_dec is not None
        ctx.shared = shared
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        idx, vals, W_dec = ctx.saved_tensors
        ops = ops_for(W_dec.device)
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[1] and ctx.needs_input_grad[2]:
            grad_vals, grad_w = ops.decode_grads(idx, vals, grad_out, W_dec, ctx.shared)
        else:
            grad_vals = ops.gather_dot(idx, grad_out, W_dec) if ctx.needs_input_grad[1] else None
            grad_w = (
                ops.scatter_rows(idx, vals, grad_out, W_dec.shape[0], ctx.shared)
                if ctx.needs_input_grad[2]
                else None
            )
        grad_b = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return None, grad_vals, grad_w, grad_b, None


class DecodeProbe(torch.autograd.Function):
    """Zeros `[N, d]` whose backward gives `vals` the gradient `SparseDecode` would, at the
    entries `mask` keeps (0 elsewhere): for entries that are 0 in the forward but need their
    gradient (JumpReLU's latents just below θ). W_dec gets nothing (its gradient there is
    vals-weighted: 0). The dot products run over the kept entries only (a CSR gather-dot),
    so a wide padded selection costs what its entries cost, not its padding."""

    @staticmethod
    def forward(ctx, idx: Tensor, vals: Tensor, W_dec: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(idx, W_dec, mask)
        return W_dec.new_zeros(idx.shape[0], W_dec.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        from saelab.kernels import torch_ops

        idx, W_dec, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        rows, slots = mask.nonzero(as_tuple=True)  # row-major: each row's entries together
        crow = torch.zeros(idx.shape[0] + 1, dtype=torch.long, device=idx.device)
        crow[1:] = torch.bincount(rows, minlength=idx.shape[0]).cumsum(0)
        dots = torch_ops.banded_dot(idx[rows, slots], crow, grad_out.contiguous(), W_dec)
        grad_vals = torch.zeros(idx.shape, dtype=dots.dtype, device=dots.device)
        grad_vals[rows, slots] = dots
        return None, grad_vals, None, None


class BandedDecode(torch.autograd.Function):
    """parts[n, l] = Σ_{j: idx[n, j] in band l} vals[n, j] · W_dec[idx[n, j]] (torch ops)."""

    @staticmethod
    def forward(ctx, idx: Tensor, vals: Tensor, W_dec: Tensor, bounds: Tensor) -> Tensor:
        from saelab.kernels import torch_ops

        perm, idx_s, vals_s, crow = torch_ops.band_plan(idx, vals, bounds)
        out = torch_ops.banded_rows(idx_s, vals_s, crow, W_dec)
        ctx.save_for_backward(perm, idx_s, vals_s, crow, W_dec)
        return out.view(idx.shape[0], bounds.numel(), W_dec.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        from saelab.kernels import torch_ops

        perm, idx_s, vals_s, crow, W_dec = ctx.saved_tensors
        grad_flat = grad_out.reshape(-1, W_dec.shape[1]).contiguous()
        grad_vals = grad_w = None
        if ctx.needs_input_grad[1]:
            dots = torch_ops.banded_dot(idx_s, crow, grad_flat, W_dec).view(perm.shape)
            grad_vals = torch.empty_like(dots).scatter_(1, perm, dots)
        if ctx.needs_input_grad[2]:
            grad_w = torch_ops.banded_scatter(idx_s, vals_s, crow, grad_flat, W_dec.shape[0])
        return None, grad_vals, grad_w, None


class GatherPreacts(torch.autograd.Function):
    """out[n, j] = (x[n] − shift) · W_enc[:, idx[n, j]] + b_enc[idx[n, j]], with
    `W_enc_rows = W_enc.T` and `shift` optional (a centring SAE's b_dec). The forward takes
    the values from `values` (the selected pre-activations, already computed), else from
    `pre` (the whole no-grad product), else computes them.

    shift's gradient is −Σ_i c_i W_enc_rows[i], with c_i the summed incoming gradient of
    latent i (b_enc's gradient): a matrix-vector product, never an `[N, d_in]` input gradient.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        shift: Tensor | None,
        W_enc_rows: Tensor,
        b_enc: Tensor | None,
        idx: Tensor,
        pre: Tensor | None,
        values: Tensor | None = None,
        shared=None,
    ) -> Tensor:
        xc = x if shift is None else x - shift
        if values is not None:
            out = values.clone()
        elif pre is not None:
            out = pre.gather(1, idx)
        else:
            out = ops_for(x.device).gather_dot(idx, xc, W_enc_rows)
            if b_enc is not None:
                out = out + b_enc[idx]
        ctx.save_for_backward(xc, W_enc_rows, idx)
        ctx.has_bias = b_enc is not None
        ctx.shift_dtype = None if shift is None else shift.dtype
        ctx.shared = shared
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xc, W_enc_rows, idx = ctx.saved_tensors
        ops = ops_for(xc.device)
        grad_out = grad_out.contiguous()
        grad_x = ops.weighted_rows(idx, grad_out, W_enc_rows) if ctx.needs_input_grad[0] else None
        grad_w = (
            ops.scatter_rows(idx, grad_out, xc, W_enc_rows.shape[0], ctx.shared)
            if ctx.needs_input_grad[2]
            else None
        )
        want_b = ctx.has_bias and ctx.needs_input_grad[3]
        want_shift = ctx.shift_dtype is not None and ctx.needs_input_grad[1]
        grad_shift = grad_b = None
        if want_b or want_shift:
            # at least fp32: a popular latent sums thousands of entries, too many for bf16
            acc = torch.promote_types(grad_out.dtype, torch.float32)
            col = torch.zeros(W_enc_rows.shape[0], dtype=acc, device=grad_out.device)
            col.index_add_(0, idx.reshape(-1), grad_out.reshape(-1).to(acc))
            if want_b:
                grad_b = col.to(grad_out.dtype)
            if want_shift:
                grad_shift = -(col @ W_enc_rows.to(acc)).to(ctx.shift_dtype)
        return grad_x, grad_shift, grad_w, grad_b, None, None, None, None
