"""Matching-Pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse
Representations with Matching Pursuit").

The encoder is k steps of matching pursuit over the decoder's own atoms (encoder and decoder
are tied: there is no encoder matrix): the residual starts as x − b_dec; each step picks the atom
with the largest inner product with the residual, records that inner product, ReLU'd, as the
atom's coefficient, and subtracts the atom times the coefficient, which leaves the residual
orthogonal to the atom just chosen. The decoder sums the chosen atoms times their coefficients
(plus b_dec), so x̂ = x − the final residual. Training backpropagates through the unrolled
pursuit (the choices are fixed, the coefficients and residuals are differentiable in W_dec and
b_dec), as in the paper and its reference code; the ReLU and tied weights follow them too.

Atoms are kept at unit norm in training. So that the saved folder (the input scale folded into
W_dec and b_dec, which then leaves the atoms at norm 1/scale) encodes raw activations into the
same latents, the pursuit is written for atoms of any norm: it picks by normalised inner product
and records <w, r> / ‖w‖², which is the paper's rule when ‖w‖ = 1. An atom chosen twice in one
row (possible when atoms are not orthogonal) is merged into one entry holding the summed
coefficient. SAELens's `matching_pursuit` class assumes unit-norm atoms, so it reads a saelab
MP folder exactly only when training did not normalise inputs (scale 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saelab.base.errors import UserError
from saelab.sae.architectures.topk import LR_BASE
from saelab.sae.base import SAE, Code, StepContext, TrainOutput
from saelab.sae.config import SAEConfig


@dataclass
class MPConfig(SAEConfig):
    """Matching pursuit: k greedy steps over the unit-norm decoder atoms (tied encoder)."""

    architecture = "mp"

    k: int = 32
    """Pursuit steps per token (at most k active latents: an atom picked twice counts once,
    and a step whose best inner product is not positive adds nothing)."""
    lr_base: float = LR_BASE
    """The learning rate of the default rule at d_sae 2**14 (the TopK family's)."""
    lr_min_width: int = 2048
    """Floor on the d_sae of the default LR rule (the TopK family's)."""
    init_encoder_scale: bool = False
    """Must stay off: the encoder is the decoder, whose atoms have unit norm."""

    def default_name(self) -> str:
        return f"mp-{self.d_sae}-k{self.k:g}"

    def validate(self) -> None:
        super().validate()
        if not 0 < self.k <= self.d_sae or int(self.k) != self.k:
            raise UserError(
                f"k must be a whole number between 1 and d_sae ({self.d_sae}) for an mp SAE, "
                f"got k={self.k}; lower k or raise d_sae"
            )
        if self.init_encoder_scale:
            raise UserError(
                "init_encoder_scale does not apply to an mp SAE (its encoder is the unit-norm "
                "decoder); leave it off"
            )
        if not self.unit_norm_decoder:
            raise UserError("an mp SAE keeps its atoms at unit norm; leave unit_norm_decoder on")


class MPSAE(SAE):
    architecture = "mp"
    config_class = MPConfig
    saelens_architecture = "matching_pursuit"
    cfg: MPConfig

    # The tied encoder: `encoder_weight` (and so W_enc) is the decoder itself.
    encoder_weight: ClassVar[property] = property(lambda self: self.W_dec)  # type: ignore[assignment]

    def __setattr__(self, name: str, value: object) -> None:
        if name == "encoder_weight":
            return  # the base class's encoder matrix: tied here, the property serves W_dec
        if name == "b_enc" and isinstance(value, nn.Parameter):
            self.register_buffer("b_enc", torch.zeros_like(value.detach()))  # no encoder bias
            return
        super().__setattr__(name, value)

    # -- the pursuit ------------------------------------------------------------------------

    def pursuit(self, x: Tensor, forced: Tensor | None = None) -> tuple[Code, Tensor]:
        """`(code, final residual)` of k steps on rows `[N, d_in]`; `forced [N, k]` replays
        given choices instead of choosing (the frozen selection of `encode_at`)."""
        w = self.W_dec
        norms = w.norm(dim=1).clamp_min(1e-12)
        with torch.no_grad():
            unit = (w / norms[:, None]).detach()
        residual = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
        steps = int(self.cfg.k) if forced is None else forced.shape[1]
        picks, coefs = [], []
        for t in range(steps):
            if forced is None:
                with torch.no_grad():
                    j = (residual.detach() @ unit.t()).argmax(1)
            else:
                j = forced[:, t]
            atom = w[j]
            coef = ((residual * atom).sum(1) / norms[j].pow(2)).relu()
            residual = residual - coef[:, None] * atom
            picks.append(j)
            coefs.append(coef)
        idx, vals = _merge_repeats(torch.stack(picks, 1), torch.stack(coefs, 1))
        return Code(idx, vals, self.d_sae), residual

    def encode_sparse(self, x: Tensor) -> Code:
        return self.pursuit(x)[0]

    def encode_at(self, x: Tensor, idx: Tensor) -> Tensor:
        """The pursuit replayed with the choices `idx [N, k]` (in pursuit order) held fixed."""
        return self.pursuit(x, forced=idx)[0].vals

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        code, _ = self.pursuit(x)
        x_hat = self.decode_sparse(code)
        mse = self.mse(x_hat, x)
        return TrainOutput(mse, {"mse": mse}, code, x_hat)

    # -- what a tied SAE must not do ----------------------------------------------------------

    @torch.no_grad()
    def scale_encoder_(self, c: float) -> None:
        raise NotImplementedError("an mp SAE's encoder is its unit-norm decoder: nothing to scale")

    def checkpoint_tensors(self, scale: float = 1.0) -> dict[str, Tensor]:
        with torch.no_grad():
            w_dec = (self.W_dec / scale).contiguous().clone()
            return {
                "W_enc": w_dec.t().contiguous(),  # tied (SAELens ignores it for this class)
                "b_enc": self.b_enc.detach().clone(),
                "W_dec": w_dec,
                "b_dec": (self.b_dec / scale).clone(),
            }

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.W_dec.copy_(tensors["W_dec"])
        self.b_dec.copy_(tensors["b_dec"])

    def saelens_config(self) -> dict:
        return {
            "residual_threshold": 0.0,
            "max_iterations": int(self.cfg.k),
            "stop_on_duplicate_support": False,
        }


def _merge_repeats(idx: Tensor, vals: Tensor) -> tuple[Tensor, Tensor]:
    """One entry per atom in each row: a repeat's coefficient is added to the atom's first
    slot and the repeat's slot zeroed (differentiably; the order of first picks is kept)."""
    same = idx[:, :, None] == idx[:, None, :]  # [N, k, k]
    earlier = torch.ones_like(same[0]).tril(-1)  # slot b before slot a
    first = ~(same & earlier).any(2)
    merged = (same & first[:, :, None]).to(vals.dtype) @ vals[:, :, None]
    return idx, merged.squeeze(2)
