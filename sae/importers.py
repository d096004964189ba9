"""Importers for SAEs trained elsewhere: SAELens folders, Gemma Scope `params.npz`, sparsify.

Each returns a saelab `SAE` (eval mode) whose encode/decode match the source's definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae.base import SAE
from saelab.sae.formats import (
    SPARSIFY_WEIGHTS,
    WEIGHTS_FILE,
    check_tensors,
    read_json,
    read_safetensors,
)
from saelab.sae.registry import make_config

SAELENS_ARCH = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def load_saelens(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """A SAELens folder: cfg.json + sae_weights.safetensors (standard, topk, jumprelu, gated)."""
    folder = Path(folder)
    cfg = read_json(folder / "cfg.json")
    arch = cfg.get("architecture", "standard")
    if arch not in SAELENS_ARCH:
        raise UserError(
            f"{folder}: SAELens architecture {arch!r} is not supported; "
            f"supported: {', '.join(SAELENS_ARCH)}"
        )
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise UserError(
            f"{folder}: normalize_activations={cfg['normalize_activations']!r} is not "
            "supported; fold the scaling into the weights first"
        )
    weights = folder / WEIGHTS_FILE
    tensors = read_safetensors(weights)
    if "W_enc" not in tensors or tensors["W_enc"].dim() != 2:
        raise UserError(f"{weights} lacks a 2-D W_enc; not a SAELens SAE")
    d_in, d_sae = tensors["W_enc"].shape
    fields: dict[str, Any] = {"d_sae": int(d_sae), "d_in": int(d_in), "unit_norm_decoder": False}
    fields["apply_b_dec_to_input"] = bool(cfg.get("apply_b_dec_to_input", True))
    if arch == "topk":
        fields["k"] = int(cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k"))
    sae = _build(SAELENS_ARCH[arch], fields, tensors, weights)
    return sae.to(device).eval()


def load_gemma_scope(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """A Gemma Scope `params.npz` (W_enc, W_dec, b_enc, b_dec, threshold): a JumpReLU SAE.

    Gemma Scope does not subtract b_dec from the input before encoding.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "params.npz"
    with np.load(_require(path)) as npz:
        missing = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - set(npz.files)
        if missing:
            raise UserError(f"{path} lacks {', '.join(sorted(missing))}; not a Gemma Scope file")
        tensors = {k: torch.from_numpy(np.asarray(npz[k], dtype=np.float32)) for k in npz.files}
    d_in, d_sae = tensors["W_enc"].shape
    fields = {
        "d_sae": int(d_sae),
        "d_in": int(d_in),
        "unit_norm_decoder": False,
        "apply_b_dec_to_input": False,
    }
    return _build("jumprelu", fields, tensors, path).to(device).eval()


def load_sparsify(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """A sparsify folder: cfg.json (d_in, k, ...) + sae.safetensors with encoder.weight
    [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec: a TopK SAE."""
    folder = Path(folder)
    cfg = read_json(folder / "cfg.json")
    weights = folder / SPARSIFY_WEIGHTS
    raw = read_safetensors(weights)
    if "encoder.weight" not in raw or "W_dec" not in raw:
        raise UserError(f"{folder}/sae.safetensors lacks encoder.weight or W_dec; not sparsify")
    if cfg.get("activation", "topk") != "topk" or cfg.get("transcode"):
        raise UserError(
            f"{folder}: only sparsify TopK autoencoders (not transcoders) are supported"
        )
    enc = raw["encoder.weight"]
    d_sae, d_in = enc.shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise UserError(f"{folder}: cfg.json says d_in={cfg['d_in']} but the weights have {d_in}")
    tensors = {
        "W_enc": enc.t().contiguous(),
        "b_enc": raw["encoder.bias"],
        "W_dec": raw["W_dec"],
        "b_dec": raw["b_dec"],
    }
    fields = {
        "d_sae": int(d_sae),
        "d_in": int(d_in),
        "k": int(cfg["k"]),
        "unit_norm_decoder": False,
    }
    return _build("topk", fields, tensors, weights).to(device).eval()


def _build(arch: str, fields: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> SAE:
    from saelab.sae.registry import build_sae

    sae = build_sae(make_config(arch, **fields))
    expected = {k: tuple(v.shape) for k, v in sae.checkpoint_tensors(1.0).items()}
    check_tensors(path, tensors, expected, f"d_in={sae.d_in}, d_sae={sae.d_sae}")
    sae.load_checkpoint_tensors({k: v.float() for k, v in tensors.items()})
    return sae


def _require(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    return path


LOADERS = {"saelens": load_saelens, "gemma_scope": load_gemma_scope, "sparsify": load_sparsify}
"""Format name (`formats.FORMATS`) -> loader, for the formats saelab did not write."""
