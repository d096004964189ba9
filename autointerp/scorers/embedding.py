"""Embedding scorer: AUROC of cos(explanation, window) for activating vs silent windows.

The offline default embedding model is all-MiniLM-L6-v2 (`saelab.activations.text_embedding`).
"""

from __future__ import annotations

import asyncio

import numpy as np

from saelab.activations.text_embedding import MODEL_NAME, embed
from saelab.autointerp import stats
from saelab.autointerp.scorers import Score, ScoringContext, finish
from saelab.autointerp.windows import render


async def embedding(ctx: ScoringContext, explanation: str) -> Score:
    windows = ctx.windows.activating + ctx.windows.silent
    labels = np.array([True] * len(ctx.windows.activating) + [False] * len(ctx.windows.silent))
    vectors = await asyncio.to_thread(embed, [explanation] + [render(w) for w in windows])
    similarity = vectors[1:] @ vectors[0]
    value = stats.auroc(similarity, labels)
    ci = stats.auroc_interval(similarity, labels, ctx.bootstrap, ctx.seed)
    provenance = {
        "scorer": "embedding",
        "model": MODEL_NAME,
        "seed": ctx.seed,
        "sampling": "activating windows not shown to the explainer vs windows where the latent "
        "is silent; plain text, no marks",
        "statistic": "AUROC of cosine similarity",
    }
    return finish(
        "embedding",
        value,
        ci,
        provenance,
        n_windows=len(windows),
        n_valid=len(windows),
        n_failures=0,
        n_positive=int(labels.sum()),
        n_negative=int((~labels).sum()),
    )
