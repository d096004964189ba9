"""The one place that tells SAE folder formats apart, and reads their weight files safely.

`checkpoint` (saelab's own folders) and `importers` (folders from other tools) both
build on this module; neither imports the other's loaders back, so there is no import cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saelab.base.errors import UserError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
FORMATS = ("saelab", "saelens", "gemma_scope", "sparsify")


def detect_format(path: str | Path) -> str:
    """Which format a path holds: one of `FORMATS` (a `UserError` when none fits)."""
    path = Path(path)
    if path.suffix == ".npz" or (path / GEMMA_SCOPE_FILE).is_file():
        return "gemma_scope"
    if (path / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    cfg = read_json(path / CFG_FILE, what="an SAE folder")
    return "saelab" if "saelab" in cfg else "saelens"


def read_json(path: Path, what: str = "an SAE folder") -> dict[str, Any]:
    """A JSON object from `path`; missing, unreadable or non-object files are `UserError`s."""
    if not path.is_file():
        raise UserError(f"{path.parent} is not {what}: {path.name} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict:
    """All tensors of a safetensors file; missing or damaged files are one-line `UserError`s."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path} is missing: the SAE's weights are not there")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise UserError(
            f"{path} is damaged (truncated or not a safetensors file: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "copy or train it again"
        ) from None


def check_tensors(
    path: Path, tensors: dict, expected: dict[str, tuple[int, ...]], cfg: str
) -> None:
    """Every expected tensor is present with the shape the config implies."""
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{path} lacks the tensor {name!r}; the file is incomplete")
        got = tuple(tensors[name].shape)
        if got != tuple(shape):
            raise UserError(
                f"{path}: tensor {name} has shape {list(got)} but {cfg} implies {list(shape)}; "
                "the config and the weights do not belong together"
            )
