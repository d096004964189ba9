"""Autograd for the sparse decoder and the sparse encoder gather.

Both backward passes touch only the selected latents: the gradient buffers of W_dec and of
the encoder are written by `scatter_rows` (a sort-and-segment reduction), and no dense
`[N, d_sae]` tensor is built or saved. Padded slots (vals 0, or a zero incoming gradient)
are skipped by that reduction. First-order gradients only (no double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from kernels.dispatch import ops_for


class SparseDecode(torch.autograd.Function):
    """out[n] = b_dec + Σ_j vals[n, j] · W_dec[idx[n, j]]."""

    @staticmethod
    def forward(ctx, idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
        ops = ops_for(W_dec.device)
        out = ops.weighted_rows(idx, vals, W_dec)
        if b_dec is not None:
            out = out + b_dec
        ctx.save_for_backward(idx, vals, W_dec)
        ctx.has_bias = b_dec is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        idx, vals, W_dec = ctx.saved_tensors
        ops = ops_for(W_dec.device)
        grad_out = grad_out.contiguous()
        grad_vals = ops.gather_dot(idx, grad_out, W_dec) if ctx.needs_input_grad[1] else None
        grad_w = (
            ops.scatter_rows(idx, vals, grad_out, W_dec.shape[0])
            if ctx.needs_input_grad[2]
            else None
        )
        grad_b = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return None, grad_vals, grad_w, grad_b


class BandedDecode(torch.autograd.Function):
    """parts[n, l] = Σ_{j: idx[n, j] in band l} vals[n, j] · W_dec[idx[n, j]] (torch ops)."""

    @staticmethod
    def forward(ctx, idx: Tensor, vals: Tensor, W_dec: Tensor, bounds: Tensor) -> Tensor:
        from kernels import torch_ops

        perm, idx_s, vals_s, crow = torch_ops.band_plan(idx, vals, bounds)
        out = torch_ops.banded_rows(idx_s, vals_s, crow, W_dec)
        ctx.save_for_backward(perm, idx_s, vals_s, crow, W_dec)
        return out.view(idx.shape[0], bounds.numel(), W_dec.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        from kernels import torch_ops

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
    """out[n, j] = x[n] · W_enc[:, idx[n, j]] + b_enc[idx[n, j]], with `W_enc_rows = W_enc.T`."""

    @staticmethod
    def forward(
        ctx, x: Tensor, W_enc_rows: Tensor, b_enc: Tensor | None, idx: Tensor, pre: Tensor | None
    ) -> Tensor:
        if pre is not None:
            out = pre.gather(1, idx)
        else:
            out = ops_for(x.device).gather_dot(idx, x, W_enc_rows)
            if b_enc is not None:
                out = out + b_enc[idx]
        ctx.save_for_backward(x, W_enc_rows, idx)
        ctx.has_bias = b_enc is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, W_enc_rows, idx = ctx.saved_tensors
        ops = ops_for(x.device)
        grad_out = grad_out.contiguous()
        grad_x = ops.weighted_rows(idx, grad_out, W_enc_rows) if ctx.needs_input_grad[0] else None
        grad_w = (
            ops.scatter_rows(idx, grad_out, x, W_enc_rows.shape[0])
            if ctx.needs_input_grad[1]
            else None
        )
        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # at least fp32: a popular latent sums thousands of entries, too many for bf16
            acc = torch.promote_types(grad_out.dtype, torch.float32)
            grad_b = torch.zeros(W_enc_rows.shape[0], dtype=acc, device=grad_out.device)
            grad_b.index_add_(0, idx.reshape(-1), grad_out.reshape(-1).to(acc))
            grad_b = grad_b.to(grad_out.dtype)
        return grad_x, grad_w, grad_b, None, None
