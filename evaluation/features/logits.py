"""Logit effects of each latent: its decoder direction read through the unembedding.

effect_i = (W_dec,i ⊙ g) · W_U, with g the final norm's scale where the model has one (the
direct path, ignoring the norm's division by the residual's RMS, which only rescales).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class LogitEffects:
    top_ids: np.ndarray
    """int `[d_sae, n]`: tokens most promoted, best first."""
    top_values: np.ndarray
    bottom_ids: np.ndarray
    """int `[d_sae, n]`: tokens most suppressed, most negative first."""
    bottom_values: np.ndarray
    hist_edges: np.ndarray
    """`[d_sae, bins + 1]`: equal-width bins between each latent's min and max effect."""
    hist_counts: np.ndarray


def unembedding(bridge) -> tuple[Tensor, Tensor | None]:
    """(W_U `[d_model, vocab]`, final norm scale `[d_model]` or None) from a loaded model."""
    hf = getattr(bridge, "original_model", None)
    if hf is None:
        raise ValueError("the model adapter does not expose the Hugging Face module")
    w_u = hf.get_output_embeddings().weight.detach().t().float()
    scale = None
    for name in (
        "model.norm",
        "transformer.ln_f",
        "model.final_layernorm",
        "gpt_neox.final_layer_norm",
    ):
        module = hf.get_submodule(name) if _has(hf, name) else None
        if module is not None and getattr(module, "weight", None) is not None:
            scale = module.weight.detach().float()
            break
    return w_u, scale


def _has(module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


@torch.no_grad()
def logit_effects(
    W_dec: Tensor,
    W_U: Tensor,
    scale: Tensor | None = None,
    n: int = 10,
    bins: int = 32,
    block: int = 512,
) -> LogitEffects:
    d_sae = W_dec.shape[0]
    out = {k: [] for k in ("ti", "tv", "bi", "bv", "he", "hc")}
    for start in range(0, d_sae, block):
        direction = W_dec[start : start + block].float()
        if scale is not None:
            direction = direction * scale
        effects = direction @ W_U
        tv, ti = effects.topk(n, dim=1)
        bv, bi = effects.topk(n, dim=1, largest=False)
        lo, hi = effects.min(1).values, effects.max(1).values
        width = (hi - lo).clamp_min(1e-12)
        idx = ((effects - lo[:, None]) / width[:, None] * bins).long().clamp(0, bins - 1)
        counts = torch.zeros(len(effects), bins, dtype=torch.long).scatter_add_(
            1, idx, torch.ones_like(idx)
        )
        edges = lo[:, None] + width[:, None] * torch.linspace(0, 1, bins + 1)
        for key, value in zip(out, (ti, tv, bi, bv, edges, counts)):
            out[key].append(value)
    cat = {k: torch.cat(v).numpy() for k, v in out.items()}
    return LogitEffects(cat["ti"], cat["tv"], cat["bi"], cat["bv"], cat["he"], cat["hc"])
