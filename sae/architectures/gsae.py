"""Gradient TopK SAE, g-SAE (Olmo, Wilson, Forsey, Hepner, Howe, Wingate 2024, "Features that
Make a Difference: Leveraging Gradients for Improved Dictionary Learning").

In training, the k latents of a token are chosen by the score

    s = z + β · z ⊙ |W_dec ∇ₓL|,      z = ReLU(W_enc(x − b_dec) + b_enc),

where ∇ₓL is the gradient of the LM loss at the hook for that token, so each latent's
activation is boosted by how much its decoder direction moves the loss. The kept values are
z itself (the score only decides which latents are kept), and the score is not differentiated
through. The gradient comes from a live source (`saelab.activations.live`) as `StepContext.grad`;
without one training stops with a `UserError`. At inference no gradient exists: encoding is
plain TopK on z, and the checkpoint is a SAELens `topk` SAE like any other.

The gradient's scale is arbitrary (it depends on the loss's reduction and the input
normalisation), so `grad_normalization` fixes the scale of |W_dec ∇ₓL| before β weighs it:
by its root mean square over the whole batch (the default: tokens whose loss is more sensitive
keep a larger boost), per token, or not at all (β then weighs the raw gradient, in the units of
the trainer's normalised inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.topk import TopKConfig, TopKSAE
from saelab.sae.base import StepContext, TrainOutput

NO_GRADIENT = (
    "a gsae SAE selects its latents with the LM loss gradient at its hook, and this training "
    "source gives none; train it with the live loader (saelab train --arch gsae, which runs the "
    "model on the store's token sequences) or use topk"
)


@dataclass
class GSAEConfig(TopKConfig):
    """g-SAE: TopK whose training selection ranks z + β·z⊙|W_dec ∇ₓL| (LM loss gradient)."""

    architecture = "gsae"

    grad_beta: float = 1.0
    """β: weight of the gradient term z⊙|W_dec ∇ₓL| in the training selection score (0: TopK)."""
    grad_normalization: Literal["batch", "token", "none"] = "batch"
    """How |W_dec ∇ₓL| is scaled before β weighs it: divided by its root mean square over the
    batch ("batch"), over each token's latents ("token"), or used raw ("none")."""

    def validate(self) -> None:
        super().validate()
        if self.grad_beta < 0:
            raise UserError(f"grad_beta must be >= 0, got {self.grad_beta}")
        if self.grad_normalization not in ("batch", "token", "none"):
            raise UserError(
                f"grad_normalization must be batch, token or none, got {self.grad_normalization!r}"
            )


class GSAE(TopKSAE):
    architecture = "gsae"
    config_class = GSAEConfig
    saelens_architecture = "topk"
    needs_lm_grad = True
    """Training needs `StepContext.grad` (the run uses the live loader)."""
    cfg: GSAEConfig

    def gradient_effect(self, grad: Tensor) -> Tensor:
        """|W_dec ∇ₓL| `[N, d_sae]`, normalised as the config says (no autograd)."""
        with torch.no_grad():
            effect = (grad.float() @ self.W_dec.t()).abs()
            how = self.cfg.grad_normalization
            if how == "batch":
                effect = effect / effect.pow(2).mean().sqrt().clamp_min(1e-30)
            elif how == "token":
                effect = effect / effect.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-30)
        return effect

    def select_with_grad(self, pre: Tensor, grad: Tensor) -> Tensor:
        """The k latents per row with the largest z + β·z⊙|W_dec ∇ₓL|: `idx [N, k]`."""
        z = pre.relu()
        score = z + self.cfg.grad_beta * z * self.gradient_effect(grad)
        return ops.topk(score, int(self.cfg.k))[1]

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        if ctx.grad is None:
            raise UserError(NO_GRADIENT)
        if ctx.grad.shape != x.shape:
            raise ValueError(f"grad {tuple(ctx.grad.shape)} does not match x {tuple(x.shape)}")
        dead = None if ctx.dead_mask is None else ctx.dead_mask.nonzero().squeeze(1)
        pre = ops.preacts(self.center(x), self.W_enc, self.b_enc)
        code = self._code(x, self.select_with_grad(pre, ctx.grad), None, pre)
        x_hat, terms = self.reconstruction_terms(code, x)
        loss = sum(terms.values())
        pre_dead = None if dead is None else pre[:, dead]
        aux = self.aux_k_dead(x, dead, pre_dead, (x - x_hat).detach())
        if aux is not None:
            terms["aux_k"] = aux
            loss = loss + self.cfg.aux_coefficient * aux
        return TrainOutput(loss, terms, code, x_hat)
