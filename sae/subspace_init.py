"""Active subspace initialisation (Wang et al. 2025, "Attention Layers Add Into Low-Dimensional
Residual Subspaces", arXiv 2508.16929).

Attention outputs fill only part of their space (in the paper about 60% of the directions
carry 99% of the variance, an effect of the output projection W_O). A decoder row drawn
uniformly from the whole space then points mostly into directions the data never takes, its
encoder row (the decoder's transpose at init) rarely wins a top-k slot, and the latent dies.
The fix: start every latent inside the active subspace, the span of the top principal
directions of a sample of activations.

As in the authors' implementation (OpenMOSS Language-Model-SAEs, `init_W_D_with_active_subspace`):
the sample's mean is removed, its top `dim` left singular vectors U `[d_in, dim]` are the
subspace, and each decoder row becomes its random initial row's first `dim` coordinates used
as coefficients on U (i.i.d. Gaussian coefficients: a direction uniform in the subspace),
renormalised; the encoder starts as the decoder's transpose, as every saelab SAE does. Only
the start is constrained: training may leave the subspace.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.base.errors import UserError


@torch.no_grad()
def active_subspace(x: Tensor, dim: int) -> Tensor:
    """Orthonormal `[d, dim]` basis of the top `dim` principal directions of rows `x [N, d]`
    (mean removed; float64 SVD)."""
    centred = x.double() - x.double().mean(0)
    rank = min(centred.shape)
    if dim > rank:
        raise UserError(
            f"active_subspace_dim {dim} exceeds what the first sample can show ({rank}: "
            f"{x.shape[0]} rows of width {x.shape[1]}); lower it or raise init_tokens"
        )
    # right singular vectors of the [N, d] sample = left singular vectors of its transpose
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:dim].T.contiguous()


@torch.no_grad()
def variance_rank(x: Tensor, fraction: float = 0.99) -> int:
    """The number of principal directions of `x [N, d]` (mean removed) that hold `fraction` of
    its variance: the paper's effective dimension, a guide to `active_subspace_dim`."""
    centred = x.double() - x.double().mean(0)
    s2 = torch.linalg.svdvals(centred).pow(2)
    share = s2.cumsum(0) / s2.sum().clamp_min(1e-300)
    return int((share < fraction).sum()) + 1


@torch.no_grad()
def init_in_active_subspace_(sae, x: Tensor, dim: int) -> None:
    """Move the decoder rows of a freshly built `sae` (and its encoder, their transpose) into
    the active subspace of `x [N, d_in]` (see the module docstring)."""
    if sae.W_dec.shape[1] != sae.d_in or getattr(sae.cfg, "target_hook", None):
        raise UserError(
            "active_subspace_dim applies to SAEs that reconstruct their input; a transcoder's "
            "decoder writes another hook"
        )
    basis = active_subspace(x, dim).to(sae.W_dec.device)  # [d_in, dim]
    coeff = sae.W_dec[:, :dim].double()
    rows = coeff @ basis.T
    rows /= rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rows = rows.to(sae.W_dec.dtype)
    sae.W_dec.copy_(rows)
    if sae.encoder_weight is not sae.W_dec:  # MP's encoder is the decoder itself
        sae.encoder_weight.copy_(rows)
