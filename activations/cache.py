"""The user cache folder for converted models and prepared corpora."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """`$SAELAB_CACHE`, else `~/.cache/saelab`."""
    return Path(os.environ.get("SAELAB_CACHE") or Path.home() / ".cache" / "saelab")


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created when missing), so that processes
    preparing the same cache entry at once (two first runs, parallel test workers) take turns
    instead of replacing each other's folder. No-op where `fcntl` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
