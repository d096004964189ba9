"""Nearest features by decoder cosine, from the SAE checkpoint named in the `saes` row (its
weights checked against the ones the results store registered).

The weights are read with safetensors' numpy loader (no torch) once per checkpoint file and
kept unit-normalised in memory; one latent's neighbours are one matrix-vector product.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saelab.resultstore import SAERow, verified_folder

WEIGHTS_FILE = "sae_weights.safetensors"


def weights_file(sae: SAERow) -> Path:
    """The SAE's weight file, after checking it is the one registered; a one-line UserError
    when it was moved, deleted or replaced."""
    return verified_folder(sae, WEIGHTS_FILE) / WEIGHTS_FILE


def unit_decoder(weights: str | Path) -> np.ndarray:
    """W_dec `[d_sae, d_in]` with each row scaled to unit norm (zero rows stay zero)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        w = np.asarray(f.get_tensor("W_dec"), dtype=np.float32)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return w / np.where(norms > 0, norms, 1.0)


def nearest(unit: np.ndarray, feature: int, k: int = 10) -> list[tuple[int, float]]:
    """The k latents whose decoder directions have the highest cosine with `feature`'s."""
    cos = unit @ unit[feature]
    cos[feature] = -np.inf
    k = min(k, len(cos) - 1)
    if k <= 0:
        return []
    top = np.argpartition(-cos, k - 1)[:k]
    top = top[np.argsort(-cos[top], kind="stable")]
    return [(int(i), float(cos[i])) for i in top]
