"""Latents two SAEs share: how stable a dictionary is across training seeds.

Paulo & Belrose (2025, "Sparse Autoencoders Trained on the Same Data Learn Different Features")
match the latents of two SAEs one to one (the Hungarian algorithm on decoder cosine
similarity) and count a pair as shared when its cosine clears a threshold (0.7 there). They
report 30-70% shared, TopK SAEs less stable than ReLU ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SharedLatents:
    """The one-to-one matching of two dictionaries and what it shares."""

    threshold: float
    """Decoder cosine at or above which a matched pair counts as shared."""
    fraction: float
    """Shared pairs over the smaller dictionary's size."""
    mean_cosine: float
    """Mean cosine of the matched pairs."""
    rows: np.ndarray
    """Latent of the first SAE of each matched pair."""
    cols: np.ndarray
    """Its partner in the second SAE."""
    cosines: np.ndarray
    """The pairs' decoder cosines."""


def match_latents(
    w_a: torch.Tensor, w_b: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one pairing of decoder rows `[n_a, d]` and `[n_b, d]` that maximises the summed
    cosine similarity: (rows of a, rows of b, their cosines), min(n_a, n_b) pairs."""
    from scipy.optimize import linear_sum_assignment

    a = torch.nn.functional.normalize(w_a.detach().double(), dim=1)
    b = torch.nn.functional.normalize(w_b.detach().double(), dim=1)
    cos = (a @ b.t()).numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return rows, cols, cos[rows, cols]


def shared_latents(sae_a, sae_b, threshold: float = 0.7) -> SharedLatents:
    """Match the decoder rows of two SAEs (same input space) and count the shared latents."""
    if sae_a.W_dec.shape[1] != sae_b.W_dec.shape[1]:
        raise ValueError(
            f"the SAEs read different widths ({sae_a.W_dec.shape[1]} and {sae_b.W_dec.shape[1]})"
        )
    rows, cols, cosines = match_latents(sae_a.W_dec, sae_b.W_dec)
    return SharedLatents(
        threshold=threshold,
        fraction=float((cosines >= threshold).mean()),
        mean_cosine=float(cosines.mean()),
        rows=rows,
        cols=cols,
        cosines=cosines,
    )
