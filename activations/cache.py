"""The user cache folder for converted models and prepared corpora."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$SAELAB_CACHE`, else `~/.cache/saelab`."""
    return Path(os.environ.get("SAELAB_CACHE") or Path.home() / ".cache" / "saelab")
