"""Core evaluation: reconstruction metrics, sparsity, and loss with the SAE spliced in.

The definitions (also in the metric catalogue, `evaluation.builtin`), each pinned by a test:
- L0 = mean number of non-zero latents per token.
- MSE = mean over tokens of ‖x − x̂‖² (summed over d, then averaged: batch-size independent).
- Explained variance = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean over the eval set, numerator and
  denominator summed separately over all tokens (predicting x̄ gives exactly 0). FVU = 1 − EV.
- Cosine = mean cos(x, x̂); L2 ratio = mean ‖x̂‖/‖x‖; relative reconstruction bias
  = E‖x̂‖² / E⟨x, x̂⟩.
- Density of latent i = fraction of tokens with f_i > 0; dead = density 0; dense = density > 0.1.
- CE loss score = (CE_zero − CE_sae)/(CE_zero − CE_clean); KL score = (KL_zero − KL_sae)/KL_zero;
  Δ loss = CE_sae − CE_clean (nats). Splicing replaces the activation only at the positions the
  SAE was trained on (not BOS or special tokens); the others keep their clean values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

DENSE_THRESHOLD = 0.1
DENSITY_BINS = np.linspace(-8.0, 0.0, 33)
"""log10-density histogram bins; dead latents are counted apart."""


@dataclass
class ReconstructionStats:
    """Streaming float64 sums, so metrics do not depend on how the tokens were batched."""

    d_in: int
    d_sae: int
    n: int = 0
    sum_sq_err: float = 0.0
    sum_sq_x: float = 0.0
    sum_x: Tensor = field(default=None)  # type: ignore[assignment]
    sum_cos: float = 0.0
    sum_l2_ratio: float = 0.0
    sum_sq_xhat: float = 0.0
    sum_dot: float = 0.0
    sum_l0: float = 0.0
    fire_counts: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sum_x is None:
            self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        if self.fire_counts is None:
            self.fire_counts = torch.zeros(self.d_sae, dtype=torch.float64)

    def update(self, x: Tensor, x_hat: Tensor, l0: Tensor, fire_counts: Tensor) -> None:
        """Add a batch: inputs and reconstructions `[N, d_in]`, active latents per token `[N]`,
        and how many of the N tokens each latent fired on `[d_sae]`."""
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.sum_sq_err += float((x - x_hat).pow(2).sum())
        self.sum_sq_x += float(x.pow(2).sum())
        self.sum_x += x.sum(0).cpu()
        x_norm, xhat_norm = x.norm(dim=1), x_hat.norm(dim=1)
        denom = (x_norm * xhat_norm).clamp_min(1e-30)
        self.sum_cos += float(
            ((x * x_hat).sum(1) / denom).where(xhat_norm > 0, torch.zeros_like(denom)).sum()
        )
        self.sum_l2_ratio += float((xhat_norm / x_norm.clamp_min(1e-30)).sum())
        self.sum_sq_xhat += float(xhat_norm.pow(2).sum())
        self.sum_dot += float((x * x_hat).sum())
        self.sum_l0 += float(l0.sum())
        self.fire_counts += fire_counts.double().cpu()

    def metrics(self) -> dict[str, float]:
        n = self.n
        if n == 0:
            raise ValueError("no tokens were evaluated")
        total_var = self.sum_sq_x - float(self.sum_x.pow(2).sum()) / n
        ev = 1.0 - self.sum_sq_err / total_var if total_var > 0 else float("nan")
        density = self.fire_counts / n
        return {
            "l0": self.sum_l0 / n,
            "mse": self.sum_sq_err / n,
            "explained_variance": ev,
            "fvu": 1.0 - ev,
            "cosine": self.sum_cos / n,
            "l2_ratio": self.sum_l2_ratio / n,
            "relative_reconstruction_bias": self.sum_sq_xhat / self.sum_dot
            if self.sum_dot
            else float("nan"),
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "n_tokens": float(n),
        }

    def density_histogram(self) -> tuple[list[float], list[int], int]:
        """(bin edges of log10 density, counts, number of dead latents)."""
        density = (self.fire_counts / max(self.n, 1)).numpy()
        alive = density[density > 0]
        counts, _ = np.histogram(np.log10(alive), bins=DENSITY_BINS)
        return DENSITY_BINS.tolist(), counts.tolist(), int((density == 0).sum())


@torch.no_grad()
def reconstruction_stats(sae, batches: Iterable[Tensor]) -> ReconstructionStats:
    """One pass of the SAE over `[N, d_in]` batches of raw activations."""
    stats = ReconstructionStats(d_in=sae.d_in, d_sae=sae.d_sae)
    for x in batches:
        code = sae.encode_sparse(x)
        x_hat = sae.decode_sparse(code)
        stats.update(x, x_hat, code.l0(), code.fire_counts())
    return stats


@dataclass
class LossStats:
    """Next-token loss of the clean model and with the hook spliced or zeroed."""

    ce_clean: float
    ce_sae: float
    ce_zero: float
    kl_sae: float
    kl_zero: float
    n_tokens: int

    def metrics(self) -> dict[str, float]:
        return {
            "ce_clean": self.ce_clean,
            "ce_sae": self.ce_sae,
            "ce_zero": self.ce_zero,
            "ce_loss_score": (self.ce_zero - self.ce_sae) / (self.ce_zero - self.ce_clean),
            "delta_loss": self.ce_sae - self.ce_clean,
            "kl_sae": self.kl_sae,
            "kl_zero": self.kl_zero,
            "kl_score": (self.kl_zero - self.kl_sae) / self.kl_zero,
            "loss_n_tokens": float(self.n_tokens),
        }


@torch.no_grad()
def loss_stats(
    bridge,
    hook: str,
    reconstruct: Callable[[Tensor], Tensor],
    tokens: Tensor,
    splice_mask: Tensor,
    batch_size: int = 8,
) -> LossStats:
    """CE and KL over next-token predictions with `reconstruct(x)` replacing the hook's output
    at `splice_mask` positions, and with zeros there. `tokens` `[S, T]`, mask bool `[S, T]`."""
    sums = dict(ce_clean=0.0, ce_sae=0.0, ce_zero=0.0, kl_sae=0.0, kl_zero=0.0)
    count = 0
    for start in range(0, len(tokens), batch_size):
        toks = tokens[start : start + batch_size]
        mask = splice_mask[start : start + batch_size]

        def splice(act, hook=None, _mask=mask):
            out = act.clone()
            out[_mask] = reconstruct(act[_mask].float()).to(act.dtype)
            return out

        def zero(act, hook=None, _mask=mask):
            out = act.clone()
            out[_mask] = 0
            return out

        clean = bridge(toks, return_type="logits").double().log_softmax(-1)[:, :-1]
        spliced = bridge.run_with_hooks(toks, fwd_hooks=[(hook, splice)], return_type="logits")
        zeroed = bridge.run_with_hooks(toks, fwd_hooks=[(hook, zero)], return_type="logits")
        target = toks[:, 1:].unsqueeze(-1)
        for name, logp in (
            ("clean", clean),
            ("sae", spliced.double().log_softmax(-1)[:, :-1]),
            ("zero", zeroed.double().log_softmax(-1)[:, :-1]),
        ):
            sums[f"ce_{name}"] += float(-logp.gather(-1, target).sum())
            if name != "clean":
                sums[f"kl_{name}"] += float((clean.exp() * (clean - logp)).sum())
        count += target.numel()
    return LossStats(**{k: v / count for k, v in sums.items()}, n_tokens=count)
