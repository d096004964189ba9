"""JumpReLU SAE (Rajamanoharan et al. 2024): f = z · H(z − θ) with a learnable θ per latent.

θ is trained through straight-through pseudo-derivatives with a rectangle kernel of
bandwidth ε. θ is a plain (not log-) parameter kept in float32 with its Adam state, since a
log-parameterised or bf16 θ barely moves. The selection keeps every latent with z > θ − ε/2,
so the latents just below the threshold, whose pseudo-derivative is non-zero, get their
gradient; those are split off and only probed for the gradient at their (zero) value, so
the decode covers the active latents alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.auxk import AuxKLoss
from saelab.sae.base import SAE, Code, StepContext, TrainOutput
from saelab.sae.config import ThresholdSAEConfig


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """z · H(z − θ); d/dz = H(z − θ), d/dθ = −(θ/ε) K((z − θ)/ε)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = (z > theta).to(z.dtype) * grad
        grad_theta = -(theta / eps) * _rectangle((z - theta) / eps) * grad
        return grad_z, _sum_to(grad_theta, theta), None


class StepFn(torch.autograd.Function):
    """H(z − θ); d/dz = 0, d/dθ = −(1/ε) K((z − θ)/ε)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * _rectangle((z - theta) / eps) * grad
        return torch.zeros_like(z), _sum_to(grad_theta, theta), None


class PreActLossFn(torch.autograd.Function):
    """λ/(N·d_sae) · Σ_rows Σ_i ReLU(θ_i − pre_i) ‖W_dec,i‖ (Anthropic's pre-activation loss,
    2025, as a mean over latents) from the dense pre-activations the selection already
    computed, with one extra GEMM in the backward (x_cᵀ G) and no second forward. The centred
    input x_c is held constant here: the term moves W_enc, b_enc, θ and the decoder norms, not
    b_dec."""

    @staticmethod
    def forward(ctx, pre, xc, W_enc, b_enc, theta, norms, lam: float) -> Tensor:
        gap = (theta - pre).clamp_min_(0)
        ctx.save_for_backward(pre, xc, theta, norms)
        ctx.lam = lam / (pre.shape[0] * pre.shape[1])
        return ctx.lam * (gap.sum(0) * norms).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, xc, theta, norms = ctx.saved_tensors
        gap = (theta - pre).clamp_min_(0)
        below = (gap > 0).to(pre.dtype)
        scale = grad * ctx.lam
        g_pre = below.mul_(norms).mul_(-scale)  # ∂/∂pre: −λ/(N·d_sae) ‖W_dec,i‖ where pre_i < θ_i
        grad_W = xc.t() @ g_pre if ctx.needs_input_grad[2] else None
        grad_b = g_pre.sum(0) if ctx.needs_input_grad[3] else None
        grad_theta = -g_pre.sum(0)
        grad_norms = scale * gap.sum(0)
        return None, None, grad_W, grad_b, grad_theta, grad_norms, None


def _sum_to(grad: Tensor, like: Tensor) -> Tensor:
    """Reduce a broadcast gradient back to `like`'s shape."""
    while grad.dim() > like.dim():
        grad = grad.sum(0)
    for dim, size in enumerate(like.shape):
        if size == 1 and grad.shape[dim] != 1:
            grad = grad.sum(dim, keepdim=True)
    return grad


@dataclass
class JumpReLUConfig(ThresholdSAEConfig):
    """JumpReLU with an L0 (or target-L0) sparsity loss."""

    architecture = "jumprelu"

    lr_base: float = 8e-4
    """The default LR rule's base (4x `SAEConfig`'s): Adam moves θ by about the LR per step,
    and at 2e-4 θ lags the encoder, so L0 misses its target and latents die (docs/
    architecture.md, "JumpReLU's target L0": on the unit-test store 7.8 for a target of 6
    at 2e-4, 6.0 here)."""
    l0_coefficient: float = 3e-3
    """λ of the sparsity loss λ · L0 (L0 = mean active latents per token)."""
    bandwidth: float = 0.05
    """ε of the rectangle kernel, in units of the normalised input (E‖x‖² = 1). Wider than
    the 0.01 of earlier versions, so that θ's pseudo-derivative reaches more latents (alone
    it hardly matters; with the 4x LR it is part of the setting measured best)."""
    threshold_init: float = 0.01
    """Initial θ of every latent (same units as the bandwidth)."""
    penalty_target_l0: float | None = None
    """When set, the sparsity loss is λ · (L0 / penalty_target_l0 − 1)² instead of λ · L0,
    with λ = `l0_coefficient` (the quadratic penalty by hand; `target_l0` with the "penalty"
    method is the same penalty at its own coefficient)."""
    target_l0_method: Literal["penalty", "controller"] = "penalty"
    """How target-L0 mode (`target_l0`) holds L0. "penalty": the sparsity loss is
    `target_l0_coefficient` · (L0 / target_l0 − 1)²; its pseudo-derivative pushes θ down when
    L0 is under the target as well as up when it is over, and no controller is involved.
    "controller": λ · L0 with the trainer's `L0Controller` scaling λ, as ReLU and Gated do; on
    JumpReLU it overshoots and winds up (Adam moves θ at about the LR per step whatever the
    coefficient, so the coefficient reaches 50-90x before L0 follows, then collapses it:
    docs/architecture.md, "JumpReLU's target L0")."""
    target_l0_coefficient: float = 1.0
    """λ of the "penalty" method. The outcome barely depends on it once the penalty dominates
    θ's gradient (1 and 10 end within 1% of the target and of each other's FVU)."""

    pre_act_coefficient: float = 0.05
    """λ_p of the pre-activation loss λ_p · mean_i ReLU(θ_i − pre_i) ‖W_dec,i‖ (mean over rows
    and latents; Anthropic, "Circuits Updates", January 2025, sum over latents: their λ_p is
    this one / d_sae): every latent below its threshold is pulled up towards it, so a latent
    that has stopped firing is revived, which JumpReLU's straight-through gradient alone never
    does (it reaches only latents within ε/2 of θ). The mean keeps one value right across
    widths (0.05 measured best at d_sae 512 and 4608: docs/architecture.md, "The revival").
    0 turns it off; it costs one dense GEMM per step."""

    aux_coefficient: float = 0.0
    """AuxK loss coefficient (as the TopK family's, scaled down further by min(1, dead /
    aux_k)): the dead latents reconstruct the residual the live ones leave, so a latent that
    has stopped firing is pointed at a direction the dictionary misses, where the
    pre-activation loss only lifts it towards its threshold. 0 turns it off; it reuses the
    dense pre-activations and costs a sparse pass over the dead latents' positive ones."""
    aux_k: int | None = None
    """Dead latents AuxK reconstructs the residual with; None uses d_in // 2."""

    def resolved_aux_k(self) -> int:
        return self.aux_k if self.aux_k is not None else max(1, (self.d_in or 2) // 2)

    def sparsity_target(self) -> float | None:
        return self.target_l0 if self.target_l0_method == "controller" else None

    def quadratic_penalty(self) -> tuple[float, float] | None:
        """(target L0, λ) of the quadratic sparsity loss, or None for λ · L0."""
        if self.penalty_target_l0 is not None:
            return self.penalty_target_l0, self.l0_coefficient
        if self.target_l0 is not None and self.target_l0_method == "penalty":
            return self.target_l0, self.target_l0_coefficient
        return None

    def default_name(self) -> str:
        if self.target_l0 is not None:
            return f"jumprelu-{self.d_sae}{self.target_suffix()}"
        if self.penalty_target_l0 is not None:
            return f"jumprelu-{self.d_sae}-l0penalty_{self.penalty_target_l0:g}"
        return f"jumprelu-{self.d_sae}-l0_{self.l0_coefficient:g}"

    def validate(self) -> None:
        super().validate()
        if self.bandwidth <= 0:
            raise UserError(f"bandwidth must be positive, got {self.bandwidth}")
        if self.l0_coefficient < 0:
            raise UserError("l0_coefficient must be >= 0")
        if self.penalty_target_l0 is not None and self.penalty_target_l0 <= 0:
            raise UserError("penalty_target_l0 must be positive")
        if self.penalty_target_l0 is not None and self.target_l0 is not None:
            raise UserError(
                "set target_l0 or penalty_target_l0, not both (target_l0 already applies the "
                "quadratic penalty with its default method)"
            )
        if self.target_l0_method not in ("penalty", "controller"):
            raise UserError(
                f"target_l0_method must be 'penalty' or 'controller', got {self.target_l0_method!r}"
            )
        if self.target_l0_coefficient <= 0:
            raise UserError(
                f"target_l0_coefficient must be positive, got {self.target_l0_coefficient}"
            )
        if self.pre_act_coefficient < 0:
            raise UserError(f"pre_act_coefficient must be >= 0, got {self.pre_act_coefficient}")
        if self.aux_coefficient < 0:
            raise UserError(f"aux_coefficient must be >= 0, got {self.aux_coefficient}")
        if self.aux_k is not None and self.aux_k < 1:
            raise UserError(f"aux_k must be positive, got {self.aux_k}")


class JumpReLUSAE(AuxKLoss, SAE):
    architecture = "jumprelu"
    config_class = JumpReLUConfig
    saelens_architecture = "jumprelu"
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig, d_in: int | None = None) -> None:
        super().__init__(cfg, d_in)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.threshold_init)))

    def encode_sparse(self, x: Tensor) -> Code:
        xc = self.center(x)
        pre = ops.preacts(xc, self.W_enc, self.b_enc)
        idx, mask = ops.threshold(pre, self.threshold.detach())
        vals = ops.gather(xc, self.W_enc, self.b_enc, idx, pre=pre).relu() * ops.mask_like(mask, xc)
        return Code(idx, vals, self.d_sae)

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        eps = self.cfg.bandwidth
        theta = self.threshold.detach()
        xc = self.center(x)
        pre = ops.preacts(xc, self.W_enc, self.b_enc)
        idx, mask = ops.threshold(pre, theta - eps / 2)
        # Latents above θ are decoded; those within ε/2 below it are 0 in the forward but
        # their pseudo-derivative moves θ, which needs only the gradient at their value
        # (`ops.probe`): apart they cost no decode and no weight gradient.
        (on, on_mask), (near, near_mask) = ops.split(idx, mask, pre.gather(1, idx) > theta[idx])
        z = ops.gather(x, self.W_enc, self.b_enc, on, pre=pre, shift=self.input_shift)
        z = z.float().relu()
        th = self.threshold[on]
        m = ops.mask_like(on_mask, z)
        vals = JumpReLUFn.apply(z, th, eps) * m
        z_near, th_near = pre.gather(1, near).float().relu(), self.threshold[near]
        m_near = ops.mask_like(near_mask, z_near)
        vals_near = JumpReLUFn.apply(z_near, th_near, eps) * m_near  # all 0
        x_hat = ops.decode(on, vals, self.W_dec, self.b_dec) + ops.probe(
            near, vals_near, self.W_dec, near_mask
        )
        mse = self.mse(x_hat, x)
        l0 = (StepFn.apply(z, th, eps) * m).sum(-1).mean()
        l0 = l0 + (StepFn.apply(z_near, th_near, eps) * m_near).sum(-1).mean()
        quadratic = self.cfg.quadratic_penalty()
        if quadratic is None:
            coef, sparsity = self.cfg.l0_coefficient * ctx.sparsity_scale, l0
        else:
            target, lam = quadratic
            coef, sparsity = lam * ctx.sparsity_scale, (l0 / target - 1) ** 2
        loss = mse + coef * sparsity
        terms = {"mse": mse, "l0_loss": sparsity}
        if self.cfg.pre_act_coefficient > 0:
            norms = self.W_dec.norm(dim=1)
            terms["pre_act_loss"] = PreActLossFn.apply(
                pre, xc.detach(), self.W_enc, self.b_enc, self.threshold, norms,
                self.cfg.pre_act_coefficient,
            )  # fmt: skip
            loss = loss + terms["pre_act_loss"]
        if self.cfg.aux_coefficient > 0:
            aux = self.aux_k_loss(x, pre, (x - x_hat).detach(), ctx.dead_mask)
            if aux is not None:
                terms["aux_k"] = aux
                loss = loss + self.cfg.aux_coefficient * aux
        code = Code(on, vals, self.d_sae)
        return TrainOutput(loss, terms, code, x_hat)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def set_firing_thresholds_(self, t: Tensor) -> None:
        torch.maximum(self.threshold, t.to(self.threshold.dtype), out=self.threshold)

    @torch.no_grad()
    def scale_encoder_(self, c: float) -> None:
        super().scale_encoder_(c)
        self.threshold.mul_(c)  # the same latents stay above threshold

    def checkpoint_tensors(self, scale: float = 1.0) -> dict[str, Tensor]:
        out = super().checkpoint_tensors(scale)
        out["threshold"] = self.threshold.detach().clone()
        return out

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_checkpoint_tensors(tensors)
        self.threshold.copy_(tensors["threshold"])
