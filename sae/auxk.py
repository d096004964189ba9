"""AuxK (Gao et al. 2024): reconstruct the residual with the dead latents, so that a latent
that has stopped firing is pointed at what the live ones miss.

A mixin over `SAE` shared by the TopK family and JumpReLU. The host's config provides
`resolved_aux_k()` (latents per row) and `aux_coefficient`; the host computes the dead
latents' pre-activations (densely, or as `ops.positive_top` from a fused selection) and the
detached residual, and adds `aux_coefficient ·` the returned loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
        columns or `ops.positive_top` of those (None: no dead pre-activation is positive).

        Only each row's positive dead pre-activations can matter after AuxK's ReLU, and on
        trained SAEs there are few (0.1-3 of k_aux 288 per row), so the selection, the
        sparse passes and the row-sparse weight gradients (`ops.rows`, over the dead latents
        some row selected) cost little however many latents are dead."""
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
        latents, local = dead, top.idx
        if local.device.type == "cpu":  # (elsewhere `unique` would sync the device each step)
            # only the dead latents some row selected: their weight rows, re-indexed locally
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
        return scale * (e_hat.float() - residual.float()).pow(2).sum(-1).mean()
