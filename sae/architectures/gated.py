"""Gated SAE (Rajamanoharan et al. 2024).

Gate path π_gate = (x − b_dec) W_gate + b_gate decides which latents fire; magnitude path
π_mag = (x − b_dec) W_mag + b_mag with W_mag = W_gate ⊙ exp(r_mag) gives their values.
Both share one gathered product (x − b_dec)·W_gate[:, i], so the encoder stays sparse:
π_gate = g + b_gate, π_mag = g · exp(r_mag) + b_mag. The gate's L1 penalty and the auxiliary
reconstruction through ReLU(π_gate) with a frozen decoder train the gate path.
W_gate is stored as the encoder (`W_enc` in checkpoints, SAELens naming) and b_gate in the
place of b_enc.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.base import SAE, Code, StepContext, TrainOutput
from saelab.sae.config import ThresholdSAEConfig


@dataclass
class GatedConfig(ThresholdSAEConfig):
    """Gated SAE with an L1 penalty on the gate pre-activations."""

    architecture = "gated"

    l1_coefficient: float = 0.3
    """λ of λ Σ_i ReLU(π_gate,i) ‖W_dec,i‖ (inputs normalised to unit mean squared norm)."""

    def default_name(self) -> str:
        if self.target_l0 is not None:
            return f"gated-{self.d_sae}{self.target_suffix()}"
        return f"gated-{self.d_sae}-l1_{self.l1_coefficient:g}"

    def validate(self) -> None:
        super().validate()
        if self.l1_coefficient < 0:
            raise UserError("l1_coefficient must be >= 0")


class GatedSAE(SAE):
    architecture = "gated"
    config_class = GatedConfig
    saelens_architecture = "gated"
    cfg: GatedConfig

    def __init__(self, cfg: GatedConfig, d_in: int | None = None) -> None:
        super().__init__(cfg, d_in)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    @property
    def b_gate(self) -> Tensor:
        return self.b_enc

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(idx, mask, π_gate, π_mag) at the latents whose gate is open."""
        xc = self.center(x)
        # gate open: x·W_gate > −b_gate; the bias-free product serves the gather too
        pre = ops.preacts(xc, self.W_enc, None)
        idx, mask = ops.threshold(pre, -self.b_enc.detach())
        g = ops.gather(x, self.W_enc, None, idx, pre=pre, shift=self.input_shift)
        m = ops.mask_like(mask, g)
        pi_gate = (g + self.b_enc[idx]) * m
        pi_mag = g * torch.exp(self.r_mag)[idx] + self.b_mag[idx]
        return idx, m, pi_gate, pi_mag

    def encode_sparse(self, x: Tensor) -> Code:
        idx, m, _, pi_mag = self._paths(x)
        return Code(idx, pi_mag.relu() * m, self.d_sae)

    def encode_at(self, x: Tensor, idx: Tensor) -> Tensor:
        """The magnitude path at `idx`, the gates held open (see `SAE.encode_at`)."""
        g = ops.gather(x, self.W_enc, None, idx, shift=self.input_shift)
        return (g * torch.exp(self.r_mag)[idx] + self.b_mag[idx]).relu()

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        idx, m, pi_gate, pi_mag = self._paths(x)
        code = Code(idx, pi_mag.relu() * m, self.d_sae)
        x_hat = self.decode_sparse(code)
        mse = self.mse(x_hat, x)
        gate_act = pi_gate.relu()
        norms = self.W_dec.norm(dim=1)
        l1 = (gate_act * norms[idx]).sum(-1).mean()
        via_gate = ops.decode(idx, gate_act, self.W_dec.detach(), self.b_dec.detach())
        aux = self.mse(via_gate, x)
        loss = mse + self.cfg.l1_coefficient * ctx.sparsity_scale * l1 + aux
        return TrainOutput(loss, {"mse": mse, "l1": l1, "aux_gate": aux}, code, x_hat)

    @torch.no_grad()
    def set_firing_thresholds_(self, t: Tensor) -> None:
        self.b_enc.sub_(t.clamp_min(0))  # the gate opens exactly where x·W_gate + b_gate > t

    @torch.no_grad()
    def scale_encoder_(self, c: float) -> None:
        # Only magnitudes scale; the gate (W_gate, b_gate) keeps deciding the same latents.
        self.r_mag.add_(float(torch.tensor(c).log()))
        self.b_mag.mul_(c)

    def checkpoint_tensors(self, scale: float = 1.0) -> dict[str, Tensor]:
        out = super().checkpoint_tensors(scale)
        out["b_gate"] = out.pop("b_enc")
        out["r_mag"] = self.r_mag.detach().clone()
        out["b_mag"] = self.b_mag.detach().clone()
        return out

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        renamed = dict(tensors)
        renamed["b_enc"] = renamed.pop("b_gate")
        super().load_checkpoint_tensors(renamed)
        self.r_mag.copy_(tensors["r_mag"])
        self.b_mag.copy_(tensors["b_mag"])
