"""TopK SAE (Gao et al. 2024) with the AuxK loss for dead latents.

`TopKSAE` is also the base of the rest of the TopK family (BatchTopK, Matryoshka): they
override `select` (which latents are active in training) and share AuxK and decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.auxk import AuxKLoss
from saelab.sae.base import SAE, Code, StepContext, TrainOutput
from saelab.sae.config import SAEConfig

LR_BASE = 3.2e-3
"""The TopK family's default `lr_base`."""


@dataclass
class TopKConfig(SAEConfig):
    """TopK: keep the k largest pre-activations (after ReLU) of each token."""

    architecture = "topk"

    k: int = 32
    """Active latents per token."""
    lr_base: float = LR_BASE
    """The learning rate of the default rule at d_sae 2**14 (used when lr is None): 16× the
    OpenAI TopK value, measured best across horizons by benchmarks/learning.py (see
    docs/architecture.md, training defaults)."""
    lr_min_width: int = 2048
    """Floor on the d_sae of the default LR rule: at 16× the OpenAI value, the rule's growth
    for narrow SAEs (0.05 at d_sae 64) wrecks them in a few steps; below 2048 latents the LR
    stays at its 2048-latent value (9.05e-3). The benchmarks (2304+) are above the floor."""
    aux_k: int | None = None
    """Dead latents AuxK reconstructs the residual with; None uses d_in // 2."""
    aux_coefficient: float = 1 / 32
    """AuxK loss coefficient (scaled down further by min(1, dead / aux_k))."""

    def default_name(self) -> str:
        return f"{self.architecture}-{self.d_sae}-k{self.k:g}"

    def validate(self) -> None:
        super().validate()
        if not 0 < self.k <= self.d_sae:
            raise UserError(
                f"k must be between 1 and d_sae ({self.d_sae}) for a {self.architecture} SAE, "
                f"got k={self.k}; lower k or raise d_sae"
            )
        if self.aux_k is not None and self.aux_k < 1:
            raise UserError(f"aux_k must be positive, got {self.aux_k}")
        if self.aux_coefficient < 0:
            raise UserError("aux_coefficient must be >= 0")

    def resolved_aux_k(self) -> int:
        return self.aux_k if self.aux_k is not None else max(1, (self.d_in or 2) // 2)


class TopKSAE(AuxKLoss, SAE):
    architecture = "topk"
    config_class = TopKConfig
    saelens_architecture = "topk"
    cfg: TopKConfig

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        """Training selection on no-grad pre-activations: `(idx, mask or None)`."""
        return ops.topk(pre, int(self.cfg.k))[1], None

    def select_inference(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.select(pre)

    def _code(
        self,
        x: Tensor,
        idx: Tensor,
        mask: Tensor | None,
        pre: Tensor | None = None,
        values: Tensor | None = None,
    ) -> Code:
        """The selected latents' values on raw `x` (centring inside the gather); `values`,
        the pre-activations at `idx` when `topk_preacts` already gave them."""
        shared = ops.shared_segments(idx, self.d_sae) if mask is None else None
        vals = ops.gather(
            x,
            self.W_enc,
            self.b_enc,
            idx,
            pre=pre,
            shift=self.input_shift,
            values=values,
            shared=shared,
        ).relu()
        if mask is not None:
            vals = vals * ops.mask_like(mask, vals)
        return Code(idx, vals, self.d_sae, shared)

    def _plain_topk(self) -> bool:
        """Whether selection is this class's own per-row top-k, which `ops.topk_preacts`
        fuses with the matmul (subclasses that select otherwise need the dense product)."""
        return type(self).select is TopKSAE.select

    def encode_sparse(self, x: Tensor) -> Code:
        if self._plain_topk() and type(self).select_inference is TopKSAE.select_inference:
            sel, idx, _ = ops.topk_preacts(self.center(x), self.W_enc, self.b_enc, int(self.cfg.k))
            return self._code(x, idx, None, values=sel)
        pre = ops.preacts(self.center(x), self.W_enc, self.b_enc)
        idx, mask = self.select_inference(pre)
        return self._code(x, idx, mask, pre)

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        dead = None if ctx.dead_mask is None else ctx.dead_mask.nonzero().squeeze(1)
        if self._plain_topk():
            k = int(self.cfg.k)
            sel, idx, pre_dead = ops.topk_preacts(
                self.center(x), self.W_enc, self.b_enc, k, cols=dead, cols_k=self._k_aux(dead)
            )
            code = self._code(x, idx, None, values=sel)
        else:
            pre = ops.preacts(self.center(x), self.W_enc, self.b_enc)
            code = self._code(x, *self.select(pre), pre)
            pre_dead = None if dead is None else pre[:, dead]
        x_hat, terms = self.reconstruction_terms(code, x)
        loss = sum(terms.values())
        aux = self.aux_k_dead(x, dead, pre_dead, (x - x_hat).detach())
        if aux is not None:
            terms["aux_k"] = aux
            loss = loss + self.cfg.aux_coefficient * aux
        return TrainOutput(loss, terms, code, x_hat)

    def reconstruction_terms(self, code: Code, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The reconstruction and its loss terms (Matryoshka adds one per level)."""
        x_hat = self.decode_sparse(code)
        return x_hat, {"mse": self.mse(x_hat, x)}

    def saelens_config(self) -> dict:
        return {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False}
