"""BatchTopK SAE (Bussmann et al. 2024): top k·N activations over the whole batch.

Training keeps an exponential moving average of the smallest kept activation; the copy the
trainer saves or hands out gets, from `calibrate_inference`, the threshold that keeps exactly
k·n activations of its latest rows under the current weights. Inference uses it as a
global JumpReLU-style threshold (saved as `threshold [d_sae]`, so SAELens loads the
checkpoint as a JumpReLU SAE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.topk import TopKConfig, TopKSAE
from saelab.sae.base import TrainOutput

CALIBRATION_ELEMENTS = 1 << 26
"""Pre-activations `calibrate_inference` holds at once (rows per chunk: this / d_sae)."""


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK: k is the mean number of active latents per token over a batch."""

    architecture = "batchtopk"

    k: float = 32
    """Mean active latents per token over a batch (need not be whole: the batch keeps the
    k·N largest)."""
    threshold_ema: float = 0.01
    """Weight of each batch's smallest kept activation in the running threshold."""
    aux_coefficient: float = 1.0
    """AuxK loss coefficient (scaled down further by min(1, dead / aux_k)). 1, not TopK's 1/32:
    a batch-wide selection leaves a latent that has found no feature yet no slot (per-row
    top-k hands it the spare slots of rows with fewer than k features), so AuxK is how it
    learns; at 1/32 it learns too little (docs/architecture.md, ground truth)."""

    def validate(self) -> None:
        super().validate()
        if not 0 < self.threshold_ema <= 1:
            raise UserError("threshold_ema must be in (0, 1]")


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    config_class = BatchTopKConfig
    saelens_architecture = "jumprelu"
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig, d_in: int | None = None) -> None:
        super().__init__(cfg, d_in)
        # float64: the EMA of small numbers drifts in float32 over long runs
        self.register_buffer("running_threshold", torch.zeros((), dtype=torch.float64))

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        return ops.batch_topk(pre, self.cfg.k)

    def select_inference(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        # Before any estimate exists (a fresh SAE), fall back to the batch selection.
        if float(self.running_threshold) <= 0:
            return self.select(pre)
        return ops.threshold(pre, float(self.running_threshold))

    @torch.no_grad()
    def after_step_update(self, out: TrainOutput) -> None:
        vals = out.code.vals.detach()
        positive = vals[vals > 0]
        if positive.numel() == 0:
            return
        lr = self.cfg.threshold_ema
        current = positive.min().to(torch.float64)
        if float(self.running_threshold) <= 0:
            self.running_threshold.copy_(current)
        else:
            self.running_threshold.mul_(1 - lr).add_(lr * current)

    @torch.no_grad()
    def calibrate_inference(self, sample: Tensor) -> None:
        """Set the threshold to the one that keeps exactly k·n of n rows' pre-activations
        (midway between the (k·n)-th and (k·n+1)-th largest), averaged over chunks of the
        sample, so that inference has L0 k on data like it. The running average lags
        whenever the weights move (early in a run it still averages the first steps'
        thresholds: 50 steps on synthetic data left the evaluated L0 27% above k), so every
        saved SAE is fitted anew."""
        rows = max(1, CALIBRATION_ELEMENTS // self.d_sae)
        total = weight = 0.0
        for chunk in sample.split(rows):
            pre = ops.preacts(self.center(chunk), self.W_enc, self.b_enc).flatten()
            keep = int(round(self.cfg.k * chunk.shape[0]))
            if not 0 < keep < pre.numel():
                continue
            top = pre.float().topk(keep + 1, sorted=True).values[-2:]
            total += float(top.double().mean()) * chunk.shape[0]
            weight += chunk.shape[0]
        if weight and total > 0:  # else fewer than k·n are positive: keep the running value
            self.running_threshold.fill_(total / weight)

    def checkpoint_tensors(self, scale: float = 1.0) -> dict[str, Tensor]:
        out = super().checkpoint_tensors(scale)
        out["threshold"] = torch.full((self.d_sae,), float(self.running_threshold))
        return out

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_checkpoint_tensors(tensors)
        if "threshold" in tensors:
            self.running_threshold.fill_(float(tensors["threshold"].max()))

    def saelens_config(self) -> dict:
        return {}
