"""AuxK (Gao et al. 2024): reconstruct the residual with the dead latents, so that a latent
that has stopped firing is pointed at what the live ones miss.

A mixin over `SAE` shared by the TopK family and JumpReLU. The host's config provides
`resolved_aux_k()` (latents per row) and `aux_coefficient`; the host computes the dead
latents' pre-activations (densely, or as `ops.positive_top` from a fused selection) and the
detached residual, and adds `aux_coefficient ·` the returned loss.

Only each row's positive dead pre-activations matter after AuxK's ReLU, and on trained SAEs
there are few (0.1-3 of k_aux 288 per row). On the CPU, where they fill less than half the
padded selection, the loss runs over just those entries (`EntryAuxK`: CSR bags over the rows
that have one, sparse weight gradients), so its cost follows the entries, not the number of
dead latents or the padded width; a fuller selection (alive latents counted dead: every slot
positive), and any selection off the CPU (where listing the entries would sync the device),
runs over the padded slots through `ops`' sparse or dense paths.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from saelab.sae import ops


class AuxKLoss:
    """`aux_k_loss` / `aux_k_dead` for an `SAE` subclass (mixed in before `SAE`)."""

    def _k_aux(self, dead: Tensor | None) -> int:
        """AuxK's latents per row over `dead` (0 without dead latents)."""
        return 0 if dead is None else min(self.cfg.resolved_aux_k(), dead.numel())  # type: ignore[attr-defined]

    def aux_k_loss(
        self, x: Tensor, pre: Tensor, residual: Tensor, dead_mask: Tensor | None
    ) -> Tensor | None:
        """Reconstruct the (detached) residual with the top-k_aux dead latents, given every
        latent's pre-activations `pre [N, d_sae]` (None without a dead mask)."""
        if dead_mask is None:
            return None
        dead = dead_mask.nonzero().squeeze(1)
        return self.aux_k_dead(x, dead, pre[:, dead], residual)

    def aux_k_dead(
        self,
        x: Tensor,
        dead: Tensor | None,
        pre_dead: Tensor | ops.PositiveTop | None,
        residual: Tensor,
    ) -> Tensor | None:
        """`aux_k_loss` given the dead latents' indices and either their pre-activation
        columns or `ops.positive_top` of those (None: no dead pre-activation is positive)."""
        if dead is None or dead.numel() == 0:
            return None
        n_dead = dead.numel()
        scale = min(n_dead / self.cfg.resolved_aux_k(), 1.0)  # type: ignore[attr-defined]
        top = (
            pre_dead
            if not isinstance(pre_dead, Tensor)
            else ops.positive_top(pre_dead, self._k_aux(dead))
        )
        if top is None:  # no dead latent is positive anywhere: e_hat is 0, and so is the gradient
            return scale * residual.float().pow(2).sum(-1).mean()
        if top.idx.device.type == "cpu" and 2 * int((top.vals > 0).sum()) < top.vals.numel():
            return scale * self._aux_k_entries(x, dead, top, residual)
        return scale * self._aux_k_padded(x, dead, top, residual)

    def _aux_k_entries(
        self, x: Tensor, dead: Tensor, top: ops.PositiveTop, residual: Tensor
    ) -> Tensor:
        """The unscaled loss over the positive entries of `top` listed one by one."""
        rows, slots = (top.vals > 0).nonzero(as_tuple=True)  # the padding holds 0
        used, inv = torch.unique(top.idx[rows, slots], return_inverse=True)
        return EntryAuxK.apply(
            self.encoder_weight,  # type: ignore[attr-defined]
            self.b_enc,  # type: ignore[attr-defined]
            self.W_dec,  # type: ignore[attr-defined]
            self.input_shift,  # type: ignore[attr-defined]
            x,
            residual,
            top.vals[rows, slots],
            rows,
            dead[used],
            inv,
        )

    def _aux_k_padded(
        self, x: Tensor, dead: Tensor, top: ops.PositiveTop, residual: Tensor
    ) -> Tensor:
        """The unscaled loss over `top`'s padded `[N, w]` slots, through the sparse kernels or
        (a wide selection over few latents) `ops`' dense path, on the weight rows of the dead
        latents (`ops.rows`: row-sparse gradients); on the CPU, of those some row selected."""
        latents, local = dead, top.idx
        if local.device.type == "cpu":  # (elsewhere `unique` would sync the device each step)
            used, local = torch.unique(top.idx, return_inverse=True)
            latents = dead[used]
        shared = ops.shared_segments(local, latents.numel())  # one backward sort for both scatters
        vals = ops.gather(
            x,
            ops.rows(self.encoder_weight, latents).t(),  # type: ignore[attr-defined]
            ops.rows(self.b_enc, latents),  # type: ignore[attr-defined]
            local,
            values=top.vals,
            shift=self.input_shift,  # type: ignore[attr-defined]
            shared=shared,
        ).relu()
        e_hat = ops.decode(local, vals, ops.rows(self.W_dec, latents), None, shared)  # type: ignore[attr-defined]
        return (e_hat.float() - residual.float()).pow(2).sum(-1).mean()


class EntryAuxK(torch.autograd.Function):
    """mean_n ‖e_n − r_n‖², e_n = Σ_{entries j of row n} v_j · W_dec[l_j], over E entries
    `(rows[j], latents[inv[j]])` listed row by row (`rows` ascending), whose pre-activation
    v_j (`vals`, no grad, all positive: AuxK's ReLU is the identity on them) is
    `(x − shift) · encoder_weight[l] + b_enc[l]`.

    The backward gives v's gradient to encoder_weight, b_enc, shift and x (as `ops.gather`
    would) and W_dec's, the weight gradients sparse over `latents` (sorted, unique), so that
    accumulating them touches only those rows. Work and memory: O((E + rows with an entry) ·
    d) through CSR bags (`ops.bag_*`), plus one read of `residual` for the rows without an
    entry; in fp32 at least."""

    @staticmethod
    def forward(
        ctx,
        encoder_weight: Tensor,
        b_enc: Tensor | None,
        W_dec: Tensor,
        shift: Tensor | None,
        x: Tensor,
        residual: Tensor,
        vals: Tensor,
        rows: Tensor,
        latents: Tensor,
        inv: Tensor,
    ) -> Tensor:
        acc = torch.promote_types(W_dec.dtype, torch.float32)
        n = residual.shape[0]
        hit, counts = torch.unique_consecutive(rows, return_counts=True)
        crow = torch.zeros(hit.numel() + 1, dtype=torch.long, device=rows.device)
        crow[1:] = counts.cumsum(0)
        w_dec = W_dec.detach().index_select(0, latents).to(acc)  # [U, d_out]
        diff = ops.bag_sums(inv, vals.to(acc), crow, w_dec)  # e_n, at the rows with an entry
        diff -= residual.index_select(0, hit).to(acc)
        missed = torch.linalg.vector_norm(residual, dim=1, dtype=acc).square()
        missed[hit] = 0  # those rows count through diff
        loss = (missed.sum() + torch.linalg.vector_norm(diff).square()) / n
        ctx.save_for_backward(encoder_weight, shift, x, vals, hit, crow, latents, inv, w_dec, diff)
        ctx.shapes = encoder_weight.shape, W_dec.shape
        ctx.dtypes = encoder_weight.dtype, W_dec.dtype, None if b_enc is None else b_enc.dtype
        ctx.n = n
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        encoder_weight, shift, x, vals, hit, crow, latents, inv, w_dec, diff = ctx.saved_tensors
        (enc_shape, dec_shape), (enc_dtype, dec_dtype, bias_dtype) = ctx.shapes, ctx.dtypes
        acc, wants, n_used = diff.dtype, ctx.needs_input_grad, latents.numel()
        g_rows = diff * (2.0 / ctx.n * grad_loss.to(acc))  # dloss/de at the rows with an entry
        g_vals = ops.bag_dots(inv, crow, g_rows, w_dec)  # v's gradient, [E]

        def sparse(summed: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
            return torch.sparse_coo_tensor(
                latents.unsqueeze(0),
                summed.to(dtype),
                shape,
                is_coalesced=True,
                check_invariants=False,
            )

        grad_enc = grad_b = grad_dec = grad_shift = grad_x = None
        if wants[2]:
            grad_dec = ops.bag_scatter(inv, vals.to(acc), crow, g_rows, n_used)
            grad_dec = sparse(grad_dec, dec_shape, dec_dtype)
        col = g_vals.new_zeros(n_used).index_add_(0, inv, g_vals)  # b_enc's gradient rows
        if wants[0]:
            xc = x.detach().index_select(0, hit).to(acc)  # the rows with an entry, centred
            if shift is not None:
                xc -= shift.detach().to(acc)
            grad_enc = sparse(ops.bag_scatter(inv, g_vals, crow, xc, n_used), enc_shape, enc_dtype)
        if bias_dtype is not None and wants[1]:
            grad_b = sparse(col, torch.Size([enc_shape[0]]), bias_dtype)
        w_enc = None
        if (shift is not None and wants[3]) or wants[4]:
            w_enc = encoder_weight.detach().index_select(0, latents).to(acc)
        if shift is not None and wants[3]:
            grad_shift = -(col @ w_enc).to(shift.dtype)
        if wants[4]:
            grad_x = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
            grad_x[hit] = ops.bag_sums(inv, g_vals, crow, w_enc).to(x.dtype)
        return grad_enc, grad_b, grad_dec, grad_shift, grad_x, None, None, None, None, None
