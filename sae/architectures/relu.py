"""ReLU SAE with the decoder-norm-weighted L1 penalty (Anthropic's April-2024 recipe)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.base import SAE, Code, StepContext, TrainOutput
from saelab.sae.config import ThresholdSAEConfig


@dataclass
class ReLUConfig(ThresholdSAEConfig):
    """ReLU + L1: f = ReLU((x - b_dec) W_enc + b_enc)."""

    architecture = "relu"

    l1_coefficient: float = 0.3
    """λ of the penalty λ Σ_i f_i ‖W_dec,i‖ (inputs normalised to unit mean squared norm)."""
    unit_norm_decoder: bool = False
    """April-2024 variant: no norm constraint; the penalty is weighted by decoder norms."""

    def default_name(self) -> str:
        if self.target_l0 is not None:
            return f"relu-{self.d_sae}{self.target_suffix()}"
        return f"relu-{self.d_sae}-l1_{self.l1_coefficient:g}"

    def validate(self) -> None:
        super().validate()
        if self.l1_coefficient < 0:
            raise UserError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")


class ReLUSAE(SAE):
    architecture = "relu"
    config_class = ReLUConfig
    saelens_architecture = "standard"
    cfg: ReLUConfig

    def _encode(self, x: Tensor) -> tuple[Code, Tensor]:
        xc = self.center(x)
        pre = ops.preacts(xc, self.W_enc, self.b_enc)
        idx, mask = ops.threshold(pre, 0.0)
        gathered = ops.gather(x, self.W_enc, self.b_enc, idx, pre=pre, shift=self.input_shift)
        vals = gathered.relu() * ops.mask_like(mask, xc)
        return Code(idx, vals, self.d_sae), xc

    def encode_sparse(self, x: Tensor) -> Code:
        return self._encode(x)[0]

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        code, _ = self._encode(x)
        x_hat = self.decode_sparse(code)
        mse = self.mse(x_hat, x)
        norms = self.W_dec.norm(dim=1)
        l1 = (code.vals * norms[code.idx]).sum(-1).mean()
        coef = self.cfg.l1_coefficient * ctx.sparsity_scale
        loss = mse + coef * l1
        return TrainOutput(loss, {"mse": mse, "l1": l1}, code, x_hat)

    @torch.no_grad()
    def set_firing_thresholds_(self, t: Tensor) -> None:
        self.b_enc.sub_(t.clamp_min(0))  # pre − t > 0 exactly where pre > t
