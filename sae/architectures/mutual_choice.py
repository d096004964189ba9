"""Mutual Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders") and its auxiliary loss `aux_zipf_loss`.

The paper frames a sparsifying activation as allocating a budget of k·N (token, latent) matches
over a batch of N tokens, each match worth its pre-activation. TopK adds "at most k per token",
Feature Choice (`feature_choice.py`) "at most m per latent"; Mutual Choice adds nothing: the
k·N largest pre-activations of the whole batch. That allocation is exactly BatchTopK's (Bussmann
et al. 2024, concurrent work), so this class reuses `BatchTopKSAE`'s selection, running
threshold and checkpoint layout. What differs here, in the paper and in the code, is the
auxiliary loss: `aux_zipf_loss` (on by default) instead of AuxK (off by default, still
available through `aux_coefficient`).

aux_zipf_loss (saelab's reading of the paper): latent firing frequencies are close to a Zipf law
in their rank, f(r) = C · r^(-α), except at the low end, where latents fire less than the law
predicts (dead latents at the extreme). Every step fits C and α by least squares in log-log
space to the running frequencies of the more frequent half of the latents that fire, where
the law holds, and extrapolates it to every rank; a latent whose frequency f_i falls
short of its rank's prediction gets a quota of ceil((Zipf(rank_i) − f_i) · N) extra tokens of the
batch, the ones where its pre-activation is largest, and those extra matches reconstruct the
(detached) residual of the main reconstruction. Dead latents, ranked last, get the law's tail
frequency. AuxK is the special case "only dead latents, k_aux per token".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from saelab.sae.base import SAE, Code, StepContext, TrainOutput


@dataclass
class MutualChoiceConfig(BatchTopKConfig):
    """Mutual Choice: the k·N largest pre-activations of a batch of N tokens (BatchTopK's
    allocation), trained with aux_zipf_loss."""

    architecture = "mutual_choice"

    aux_coefficient: float = 0.0
    """AuxK loss coefficient (0: off; the paper's auxiliary loss is aux_zipf_loss)."""
    aux_zipf_coefficient: float = 0.25
    """Coefficient of aux_zipf_loss: the residual reconstructed by the latents that fire less
    often than the Zipf law fitted to the running frequencies predicts (0: off). 0.25 left
    fewer dead latents and recovered more true features than 1/32 (AuxK's) and 1 on synthetic
    data (benchmarks/second_wave.py, docs/architecture.md)."""
    zipf_frequency_ema: float = 0.05
    """Weight of each batch's firing fractions in the running frequencies aux_zipf_loss fits."""

    def validate(self) -> None:
        super().validate()
        if self.aux_zipf_coefficient < 0:
            raise UserError(
                f"aux_zipf_coefficient must be >= 0 (0 turns it off), got {self.aux_zipf_coefficient}"
            )
        if not 0 < self.zipf_frequency_ema <= 1:
            raise UserError(f"zipf_frequency_ema must be in (0, 1], got {self.zipf_frequency_ema}")


def zipf_fit(freq: Tensor) -> tuple[float, float] | None:
    """`(C, α)` of the least-squares line log f = log C − α log rank (rank 1 = most frequent)
    through the more frequent half of the latents that fire (at least two): the law is fitted
    where it holds and extrapolated to the low end, where latents fall short of it. None when
    fewer than two latents fire."""
    f = freq.double()
    alive = f[f > 0].sort(descending=True).values
    if alive.numel() < 2:
        return None
    alive = alive[: max(2, math.ceil(alive.numel() / 2))]
    log_r = torch.arange(1, alive.numel() + 1, dtype=torch.float64, device=f.device).log()
    log_f = alive.log()
    dr = log_r - log_r.mean()
    slope = float((dr * (log_f - log_f.mean())).sum() / dr.pow(2).sum())
    intercept = float(log_f.mean()) - slope * float(log_r.mean())
    return math.exp(intercept), -slope


def zipf_shortfall(freq: Tensor) -> Tensor:
    """Per latent, how much less often it fires than the fitted Zipf law predicts at its
    frequency rank (0 where it fires as often or more), float64 `[d_sae]`; all zeros when no
    law can be fitted. Ties in frequency are ranked by latent index."""
    fit = zipf_fit(freq)
    f = freq.double()
    if fit is None:
        return torch.zeros_like(f)
    c, alpha = fit
    order = torch.sort(f, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, f.numel() + 1, device=f.device)
    expected = (c * rank.double().pow(-alpha)).clamp(max=1.0)
    return (expected - f).clamp_min(0)


def aux_zipf_loss(
    sae: SAE, x: Tensor, pre: Tensor, residual: Tensor, freq: Tensor
) -> Tensor | None:
    """The residual's squared error (summed over d_in, mean over tokens) after each latent
    short of its Zipf frequency reconstructs it on its quota of tokens (`zipf_shortfall` × N,
    rounded up), chosen by largest pre-activation; None when no latent is short."""
    n = x.shape[0]
    quota = torch.ceil(zipf_shortfall(freq) * n - 1e-6).clamp(0, n).long()
    if int(quota.max()) == 0:
        return None
    idx, mask = ops.column_topk(pre, quota)
    vals = ops.gather(x, sae.W_enc, sae.b_enc, idx, pre=pre, shift=sae.input_shift).relu()
    vals = vals * ops.mask_like(mask, vals)
    e_hat = ops.decode(idx, vals, sae.W_dec, None)
    return (e_hat.float() - residual.float()).pow(2).sum(-1).mean()


class ZipfAux:
    """What Mutual Choice and Feature Choice share: the running firing frequencies and the
    training forward with AuxK and aux_zipf_loss beside the reconstruction."""

    cfg: MutualChoiceConfig

    def _init_frequencies(self) -> None:
        self.register_buffer("firing_frequency", torch.zeros(self.d_sae))  # type: ignore[attr-defined]
        self.register_buffer("frequency_seen", torch.zeros((), dtype=torch.bool))  # type: ignore[attr-defined]

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        pre = ops.preacts(self.center(x), self.W_enc, self.b_enc)  # type: ignore[attr-defined]
        idx, mask = self.select(pre)  # type: ignore[attr-defined]
        code: Code = self._code(x, idx, mask, pre)  # type: ignore[attr-defined]
        x_hat, terms = self.reconstruction_terms(code, x)  # type: ignore[attr-defined]
        loss = sum(terms.values())
        residual = (x - x_hat).detach()
        if self.cfg.aux_coefficient > 0 and ctx.dead_mask is not None:
            aux = self.aux_k_loss(x, pre, residual, ctx.dead_mask)  # type: ignore[attr-defined]
            if aux is not None:
                terms["aux_k"] = aux
                loss = loss + self.cfg.aux_coefficient * aux
        if self.cfg.aux_zipf_coefficient > 0 and bool(self.frequency_seen):
            aux = aux_zipf_loss(self, x, pre, residual, self.firing_frequency)  # type: ignore[arg-type]
            if aux is not None:
                terms["aux_zipf"] = aux
                loss = loss + self.cfg.aux_zipf_coefficient * aux
        return TrainOutput(loss, terms, code, x_hat)

    @torch.no_grad()
    def update_frequencies(self, code: Code) -> None:
        batch = code.fire_counts() / max(code.vals.shape[0], 1)
        if not bool(self.frequency_seen):
            self.firing_frequency.copy_(batch)
            self.frequency_seen.fill_(True)
        else:
            self.firing_frequency.lerp_(batch, self.cfg.zipf_frequency_ema)


class MutualChoiceSAE(ZipfAux, BatchTopKSAE):
    architecture = "mutual_choice"
    config_class = MutualChoiceConfig
    cfg: MutualChoiceConfig

    def __init__(self, cfg: MutualChoiceConfig, d_in: int | None = None) -> None:
        super().__init__(cfg, d_in)
        self._init_frequencies()

    @torch.no_grad()
    def after_step_update(self, out: TrainOutput) -> None:
        super().after_step_update(out)  # the running inference threshold
        self.update_frequencies(out.code)
