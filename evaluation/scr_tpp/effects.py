"""Latent effects on a probe, the top-n selection, and the ablation (SAEBench 0.6's
`get_effects_per_class_precomputed_acts`, `select_top_n_features`,
`ablated_precomputed_activations`).

- effect_j = (mean pooled latent j over the probe's positive training texts − over its
  negatives) × (probe weight · W_dec[j]); SCR ranks by |effect|, TPP clamps the mean difference
  at 0 first (latents that fire more on the class).
- The top n latents by effect among those with a nonzero effect (fewer when fewer are nonzero).
- Ablation: each token's latents S are zeroed and the SAE's error added back, x' = decode(f with
  S zeroed) + (x − decode(f)) = x − Σ_{j∈S} f_j W_dec[j]; its mean over a text's real tokens is
  the text's pooled activation minus Σ_{j∈S} (pooled f_j) W_dec[j], which is what is computed.
  (SAEBench also decodes its zeroed BOS/padding positions and sums them into the mean, a side
  effect of its masking; here only real tokens count.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from saelab.evaluation.datasets.text_acts import TokenActivations, mean_pool


@torch.no_grad()
def pooled_latents(sae, acts: TokenActivations, batch_tokens: int = 4096) -> Tensor:
    """`[N, d_sae]` float32: each text's SAE latents averaged over its real tokens."""
    device = sae.W_dec.device
    counts = torch.from_numpy(np.diff(acts.offsets))
    text_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
    sums = torch.zeros(len(counts), sae.d_sae)
    for start in range(0, len(acts.acts), batch_tokens):
        x = acts.acts[start : start + batch_tokens].to(device, torch.float32)
        sums.index_add_(0, text_of[start : start + batch_tokens], sae.encode(x).float().cpu())
    return sums / counts[:, None].float()


def latent_effects(
    f_pos: Tensor, f_neg: Tensor, probe_weight: Tensor, W_dec: Tensor, *, scr: bool
) -> Tensor:
    """`[d_sae]` effects of the latents on a probe, from the pooled latents of its positive
    `f_pos [P, d_sae]` and negative `f_neg [Q, d_sae]` training texts."""
    diff = f_pos.double().mean(0) - f_neg.double().mean(0)
    if not scr:
        diff = diff.clamp_min(0.0)
    effects = diff * (W_dec.detach().double().cpu() @ probe_weight.double())
    return effects.abs() if scr else effects


def top_latents(effects: Tensor, n: int) -> Tensor:
    """Indices of the k largest effects, k = min(n, number of nonzero effects), ties to the
    lower index: SAEBench's `select_top_n_features` (its top-k runs over every latent, so
    when n exceeds the positive effects of a TPP probe, zero effects come before negative
    ones)."""
    k = min(n, int(torch.count_nonzero(effects)))
    return torch.argsort(-effects, stable=True)[:k]


def ablate(x_pooled: Tensor, f_pooled: Tensor, W_dec: Tensor, latents: Tensor) -> Tensor:
    """`[N, d]`: pooled activations with the `latents` zeroed and the SAE's error kept."""
    if len(latents) == 0:
        return x_pooled
    W = W_dec.detach().float().cpu()[latents]
    return x_pooled - f_pooled[:, latents] @ W


__all__ = ["ablate", "latent_effects", "mean_pool", "pooled_latents", "top_latents"]
