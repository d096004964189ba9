"""Matryoshka SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionary prefixes.

One (Batch)TopK selection over the whole dictionary is shared by every level; level l
reconstructs x from the selected latents with index < m_l, and the loss sums the levels'
squared errors. The levels' disjoint bands are decoded in one pass (`ops.decode_bands`) and
summed cumulatively, so all levels together cost one sparse decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from saelab.sae.base import Code, TrainOutput


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka over BatchTopK (default) or TopK."""

    architecture = "matryoshka"

    prefix_sizes: list[int] | None = None
    """Nested prefix sizes m_1 < ... < m_L = d_sae; None uses d_sae/16, /8, /4, /2, 1.
    d_sae is appended when missing."""
    selection: Literal["batchtopk", "topk"] = "batchtopk"
    """Shared selection: "batchtopk" (saved as JumpReLU with the running threshold) or
    "topk" (saved as TopK)."""

    def resolved_prefixes(self) -> list[int]:
        sizes = self.prefix_sizes or [self.d_sae // d for d in (16, 8, 4, 2) if self.d_sae // d]
        sizes = sorted(set(int(s) for s in sizes))
        if not sizes or sizes[-1] != self.d_sae:
            sizes.append(self.d_sae)
        return sizes

    def validate(self) -> None:
        super().validate()
        if self.selection not in ("batchtopk", "topk"):
            raise UserError(
                f"matryoshka selection must be batchtopk or topk, got {self.selection!r}"
            )
        sizes = self.prefix_sizes or []
        if any(not 0 < s <= self.d_sae for s in sizes):
            raise UserError(f"prefix_sizes must lie in 1..d_sae ({self.d_sae}), got {sizes}")


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    config_class = MatryoshkaConfig
    cfg: MatryoshkaConfig

    @property
    def saelens_architecture(self) -> str:  # type: ignore[override]
        return "topk" if self.cfg.selection == "topk" else "jumprelu"

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.cfg.selection == "topk":
            return ops.topk(pre, int(self.cfg.k))[1], None
        return ops.batch_topk(pre, self.cfg.k)

    def select_inference(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.cfg.selection == "topk":
            return self.select(pre)
        return super().select_inference(pre)

    def reconstruction_terms(self, code: Code, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms: dict[str, Tensor] = {}
        prefixes = self.cfg.resolved_prefixes()
        parts = ops.decode_bands(code.idx, code.vals, self.W_dec, prefixes).unbind(1)
        x_hat = self.b_dec
        for level, (upper, part) in enumerate(zip(prefixes, parts)):
            x_hat = x_hat + part  # level l: the bands up to l
            name = "mse" if level == len(prefixes) - 1 else f"mse_prefix_{upper}"
            terms[name] = self.mse(x_hat, x)
        return x_hat, terms

    def after_step_update(self, out: TrainOutput) -> None:
        if self.cfg.selection == "batchtopk":
            super().after_step_update(out)

    def calibrate_inference(self, sample: Tensor) -> None:
        if self.cfg.selection == "batchtopk":
            super().calibrate_inference(sample)

    def checkpoint_tensors(self, scale: float = 1.0) -> dict[str, Tensor]:
        out = super().checkpoint_tensors(scale)
        if self.cfg.selection == "topk":
            del out["threshold"]
        return out

    def saelens_config(self) -> dict:
        if self.cfg.selection == "topk":
            return {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False}
        return {}
