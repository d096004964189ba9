"""TopK SAE (Gao et al. 2024) with the AuxK loss for dead latents.

`TopKSAE` is also the base of the rest of the TopK family (BatchTopK, Matryoshka): they
override `select` (which latents are active in training) and share AuxK and decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sae import ops
from sae.base import SAE, Code, StepContext, TrainOutput
from sae.config import SAEConfig
from saelab_base.errors import UserError


@dataclass
class TopKConfig(SAEConfig):
    """TopK: keep the k largest pre-activations (after ReLU) of each token."""

    architecture = "topk"

    k: int = 32
    """Active latents per token."""
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


class TopKSAE(SAE):
    architecture = "topk"
    config_class = TopKConfig
    saelens_architecture = "topk"
    cfg: TopKConfig

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        """Training selection on no-grad pre-activations: `(idx, mask or None)`."""
        return ops.topk(pre, int(self.cfg.k))[1], None

    def select_inference(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.select(pre)

    def _code(self, x: Tensor, idx: Tensor, mask: Tensor | None, pre: Tensor | None = None) -> Code:
        """The selected latents' values on raw `x` (centring inside the gather)."""
        vals = ops.gather(x, self.W_enc, self.b_enc, idx, pre=pre, shift=self.input_shift).relu()
        if mask is not None:
            vals = vals * ops.mask_like(mask, vals)
        return Code(idx, vals, self.d_sae)

    def encode_sparse(self, x: Tensor) -> Code:
        pre = ops.preacts(self.center(x), self.W_enc, self.b_enc)
        idx, mask = self.select_inference(pre)
        return self._code(x, idx, mask, pre)

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        pre = ops.preacts(self.center(x), self.W_enc, self.b_enc)
        code = self._code(x, *self.select(pre), pre)
        x_hat, terms = self.reconstruction_terms(code, x)
        loss = sum(terms.values())
        aux = self.aux_k_loss(x, pre, (x - x_hat).detach(), ctx.dead_mask)
        if aux is not None:
            terms["aux_k"] = aux
            loss = loss + self.cfg.aux_coefficient * aux
        return TrainOutput(loss, terms, code, x_hat)

    def reconstruction_terms(self, code: Code, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The reconstruction and its loss terms (Matryoshka adds one per level)."""
        x_hat = self.decode_sparse(code)
        return x_hat, {"mse": self.mse(x_hat, x)}

    def aux_k_loss(
        self, x: Tensor, pre: Tensor, residual: Tensor, dead_mask: Tensor | None
    ) -> Tensor | None:
        """Reconstruct the (detached) residual with the top-k_aux dead latents.

        Runs on the dead latents' slice of the weights: with few dead latents (the usual
        case) `ops` then takes its dense path on an `[N, n_dead]` block, far cheaper than
        a sparse pass of k_aux latents per row over the whole dictionary."""
        if dead_mask is None:
            return None
        dead = dead_mask.nonzero().squeeze(1)
        n_dead = dead.numel()
        if n_dead == 0:
            return None
        k_aux = min(self.cfg.resolved_aux_k(), n_dead)
        pre_dead = pre[:, dead]
        local = ops.topk(pre_dead, k_aux)[1]
        w_enc = self.encoder_weight[dead].t()
        vals = ops.gather(
            x, w_enc, self.b_enc[dead], local, pre=pre_dead, shift=self.input_shift
        ).relu()
        e_hat = ops.decode(local, vals, self.W_dec[dead], None)
        scale = min(n_dead / self.cfg.resolved_aux_k(), 1.0)
        return scale * (e_hat.float() - residual.float()).pow(2).sum(-1).mean()

    def saelens_config(self) -> dict:
        return {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False}
