"""Feature Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders"): every latent chooses its tokens.

In a batch of N tokens each latent keeps the m = round(k·N / d_sae) tokens where its
pre-activation is largest (the expert-choice routing of mixtures of experts, with latents as
experts), so the batch holds about k·N matches, k per token on average, however unevenly they
fall on tokens: a token may get many latents or none. Every latent fires on m tokens of every
batch (where its top pre-activations are positive), so no latent can die; the paper reports
zero dead latents. Capacities are uniform here (the paper's Zipf-shaped per-latent capacities
are not implemented), so the Zipf law aux_zipf_loss fits (shared with Mutual Choice) is flat:
it only reaches the latents whose top pre-activations were not positive, which fire less
often than the m tokens they were offered.

Inference cannot see a batch: each latent keeps a running estimate (EMA) of the smallest value
it kept in training, refitted on the trainer's recent rows whenever the SAE is saved
(`calibrate_inference`), and fires where its pre-activation exceeds it, so a latent fires on
about the same fraction m / N = k / d_sae of tokens, and L0 stays near k on average. The thresholds are
saved as `threshold [d_sae]`, so SAELens loads the checkpoint as a JumpReLU SAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.sae import ops
from saelab.sae.architectures.batchtopk import CALIBRATION_ELEMENTS
from saelab.sae.architectures.mutual_choice import MutualChoiceConfig, ZipfAux
from saelab.sae.architectures.topk import TopKSAE
from saelab.sae.base import TrainOutput


@dataclass
class FeatureChoiceConfig(MutualChoiceConfig):
    """Feature Choice: each latent keeps its round(k·N / d_sae) largest pre-activations of a
    batch of N tokens (k is the mean per token)."""

    architecture = "feature_choice"

    threshold_ema: float = 0.01
    """Weight of each batch's smallest kept activation in each latent's running threshold."""


class FeatureChoiceSAE(ZipfAux, TopKSAE):
    architecture = "feature_choice"
    config_class = FeatureChoiceConfig
    saelens_architecture = "jumprelu"
    cfg: FeatureChoiceConfig

    def __init__(self, cfg: FeatureChoiceConfig, d_in: int | None = None) -> None:
        super().__init__(cfg, d_in)
        self._init_frequencies()
        # float64: the EMA of small numbers drifts in float32 over long runs
        self.register_buffer("latent_threshold", torch.zeros(self.d_sae, dtype=torch.float64))

    def capacity(self, n_rows: int) -> int:
        """Tokens each latent keeps in a batch of `n_rows`: round(k·N / d_sae), at least 1 (so
        a batch of fewer than d_sae / (2k) rows gets more than k latents per token)."""
        return max(1, min(n_rows, round(self.cfg.k * n_rows / self.d_sae)))

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        return ops.column_topk(pre, self.capacity(pre.shape[0]))

    def select_inference(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        # Before any estimate exists (a fresh SAE), fall back to the batch's own choice.
        if not bool((self.latent_threshold > 0).any()):
            return self.select(pre)
        return ops.threshold(pre, self.latent_threshold.to(pre.dtype))

    @torch.no_grad()
    def after_step_update(self, out: TrainOutput) -> None:
        code = out.code
        vals = code.vals.detach()
        kept = vals > 0
        smallest = torch.full((self.d_sae,), torch.inf, dtype=torch.float64, device=vals.device)
        smallest.scatter_reduce_(0, code.idx[kept], vals[kept].double(), "amin")
        seen = torch.isfinite(smallest)
        fresh = seen & (self.latent_threshold <= 0)
        ema = self.cfg.threshold_ema
        moved = self.latent_threshold.lerp(smallest.where(seen, self.latent_threshold), ema)
        self.latent_threshold.copy_(torch.where(fresh, smallest, moved))
        self.update_frequencies(code)

    @torch.no_grad()
    def calibrate_inference(self, sample: Tensor) -> None:
        """Set each latent's threshold midway between its m-th and (m+1)-th largest
        pre-activation over the sample's n rows (m = its capacity for n rows), so that on data
        like it every latent fires on its share k/d_sae of the tokens and the mean L0 is k; the
        running average lags while the weights move (its held-out L0 was 8% below k after 400
        synthetic steps). A latent whose m-th value is not positive keeps its running value."""
        n = sample.shape[0]
        m = self.capacity(n)
        if m >= n:
            return
        centred = self.center(sample)
        block = max(1, CALIBRATION_ELEMENTS // max(n, 1))
        for start in range(0, self.d_sae, block):
            cols = slice(start, start + block)
            pre = ops.preacts(centred, self.W_enc[:, cols], self.b_enc[cols])
            top = pre.double().topk(m + 1, dim=0).values  # [m + 1, block]
            fitted = top[-2:].mean(0)
            keep = top[-2] > 0
            current = self.latent_threshold[cols]
            current.copy_(torch.where(keep, fitted, current))

    def checkpoint_tensors(self, scale: float = 1.0) -> dict[str, Tensor]:
        out = super().checkpoint_tensors(scale)
        out["threshold"] = self.latent_threshold.float().clone()
        return out

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_checkpoint_tensors(tensors)
        if "threshold" in tensors:
            self.latent_threshold.copy_(tensors["threshold"])

    def saelens_config(self) -> dict:
        return {}
