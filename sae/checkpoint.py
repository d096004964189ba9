"""SAE folders (SAELens layout) and the training-state file, written atomically.

An SAE folder holds `cfg.json` (SAELens's fields plus a `saelab` block with the resolved
config, the format version and provenance) and `sae_weights.safetensors` with `W_enc
[d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`, `b_dec`, plus `threshold` (JumpReLU,
BatchTopK) or `b_gate`, `r_mag`, `b_mag` (Gated). The training input scale is folded in.
The training state (model in training units, optimisers, step, RNG, loader position) is one
`torch.save` file beside it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from saelab.base import __version__
from saelab.base.errors import UserError
from saelab.base.fs import disk_error
from saelab.sae import importers
from saelab.sae.base import SAE
from saelab.sae.formats import (
    CFG_FILE,
    WEIGHTS_FILE,
    check_tensors,
    detect_format,
    read_json,
    read_safetensors,
)
from saelab.sae.registry import REGISTRY, config_from_dict

FORMAT_VERSION = 1
STATE_FILE = "training_state.pt"
_BLOCK_KEYS = ("model_name", "hook_name", "trained_tokens", "step")


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename over `path`, so readers never see a torn file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise disk_error(err, str(path)) from None
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise disk_error(err, str(path)) from None
        if "No space left on device" in str(err):  # safetensors wraps the OSError
            raise disk_error(OSError(errno.ENOSPC, str(err)), str(path)) from None
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def saelens_cfg(
    sae: SAE, scale: float, meta: dict[str, Any] | None = None, target_scale: float | None = None
) -> dict[str, Any]:
    """cfg.json: SAELens's fields, then saelab's own block. A transcoder's `hook_name` is its
    input hook; its block adds `target_hook`, `d_out` and the folded target scale."""
    meta = meta or {}
    hook = meta.get("hook_name") or getattr(sae, "input_hook", None)
    cfg: dict[str, Any] = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "model_name": meta.get("model_name"),
        "hook_name": hook,
        "metadata": {"model_name": meta.get("model_name"), "hook_name": hook},
        **sae.saelens_config(),
    }
    cfg["saelab"] = {
        "format_version": FORMAT_VERSION,
        "saelab_version": __version__,
        "architecture": sae.architecture,
        "config": sae.cfg.to_dict(),
        "folded_input_scale": scale,
        "input_scale_convention": "W_enc*s, W_dec/s, b_dec/s (latents in training units)",
        "hook_name": hook,
        "model_name": meta.get("model_name"),
        "trained_tokens": meta.get("trained_tokens"),
        "step": meta.get("step"),
        "provenance": {k: v for k, v in meta.items() if k not in _BLOCK_KEYS},
    }
    if hasattr(sae, "target_hook"):
        cfg["saelab"]["target_hook"] = sae.target_hook
        cfg["saelab"]["d_out"] = sae.d_out
        cfg["saelab"]["folded_target_scale"] = scale if target_scale is None else target_scale
    if hasattr(sae, "target_hooks"):  # a cross-layer transcoder: scales are per layer
        cfg["saelab"]["input_hooks"] = sae.input_hooks
        cfg["saelab"]["target_hooks"] = sae.target_hooks
        cfg["saelab"]["d_out"] = sae.d_out
        cfg["saelab"]["folded_target_scale"] = scale if target_scale is None else target_scale
    return cfg


def save_sae(
    sae: SAE,
    folder: str | Path,
    scale: float = 1.0,
    meta: dict | None = None,
    target_scale: float | None = None,
) -> Path:
    """Write an SAE folder that works on raw activations (scale folded in). `target_scale`:
    a transcoder's training scale of its target (None: `scale`)."""
    folder = Path(folder)
    raw = (
        sae.checkpoint_tensors(scale)
        if target_scale is None
        else sae.checkpoint_tensors(scale, target_scale)  # type: ignore[call-arg]
    )
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in raw.items()}
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    write_json(folder / CFG_FILE, saelens_cfg(sae, scale, meta, target_scale))
    return folder


def read_cfg(folder: str | Path) -> dict[str, Any]:
    return read_json(Path(folder) / CFG_FILE, what="an SAE folder")


def load_sae(
    folder: str | Path, architecture: str | None = None, device: str | torch.device = "cpu"
) -> SAE:
    """Load an SAE folder of any known format (saelab's own, SAELens, Gemma Scope, sparsify);
    `architecture` (when given) must match the saved one."""
    fmt = detect_format(folder)
    if fmt == "saelab":
        sae = _load_saelab(Path(folder), read_cfg(folder)).to(device)
    else:
        sae = importers.LOADERS[fmt](folder, device=device)
    if architecture is not None and sae.architecture != architecture:
        raise UserError(
            f"{folder} holds a {sae.architecture!r} SAE, not {architecture!r}; "
            "pick the matching architecture or another folder"
        )
    return sae.eval()


def load_any(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE from any known format, guessed from the files present."""
    return load_sae(path, device=device)


def _load_saelab(folder: Path, cfg: dict[str, Any]) -> SAE:
    block = cfg["saelab"]
    cfg_path = folder / CFG_FILE
    if not isinstance(block, dict):
        raise UserError(f"{cfg_path}: its 'saelab' entry should be an object")
    version = block.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{folder} has checkpoint format version {version}; this saelab reads version "
            f"{FORMAT_VERSION}: re-export it or use a matching saelab"
        )
    sae = _build_from_block(block, folder)
    for key in ("d_in", "d_sae"):  # SAELens's top-level copies must agree with saelab's own
        if key in cfg and cfg[key] != getattr(sae, key):
            raise UserError(
                f"{cfg_path} says {key}={cfg[key]!r} at the top but {getattr(sae, key)} in its "
                "saelab config; the file was edited: restore it or train again"
            )
    path = folder / WEIGHTS_FILE
    tensors = read_safetensors(path)
    expected = {k: tuple(v.shape) for k, v in sae.checkpoint_tensors(1.0).items()}
    check_tensors(path, tensors, expected, f"{CFG_FILE} (d_in={sae.d_in}, d_sae={sae.d_sae})")
    try:
        sae.load_checkpoint_tensors(tensors)
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{path} does not fit the SAE its {CFG_FILE} describes ({err})") from None
    return sae


def _build_from_block(block: dict, folder: str | Path) -> SAE:
    arch = block.get("architecture")
    if arch not in REGISTRY:
        raise UserError(
            f"{folder} holds an SAE of unknown architecture {arch!r}; known: "
            f"{', '.join(sorted(REGISTRY))}"
        )
    config = block.get("config")
    cfg_path = Path(folder) / CFG_FILE
    if not isinstance(config, dict):
        raise UserError(f"{cfg_path} lacks the saelab config of the SAE; the file is incomplete")
    # The shape fields never fall back to defaults: a missing one means a damaged file.
    missing = [k for k in ("d_in", "d_sae") if not isinstance(config.get(k), int)]
    if missing:
        raise UserError(
            f"{cfg_path} lacks a valid {' and '.join(missing)} in its saelab config; "
            "the file is damaged: restore it or train again"
        )
    if "input_hook" in config and not config.get("input_hook"):  # a transcoder's input hook
        config = {**config, "input_hook": block.get("hook_name")}
    cfg = config_from_dict({**config, "architecture": arch})
    return REGISTRY[arch](cfg)


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save the training state (one file for the whole sweep)."""
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write(Path(path), lambda p: _torch_save(state, p))


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file, so a full disk surfaces as OSError(ENOSPC), not a torch message.
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def load_training_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist (drop --resume to start fresh)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has training-state version {state.get('format_version')}, expected "
            f"{FORMAT_VERSION}; it was written by another saelab version"
        )
    return state


def trained_model_sha256(cfg: dict[str, Any]) -> str | None:
    """The SHA-256 of the weights of the model whose activations the SAE was trained on.

    saelab checkpoints keep it in the store's provenance; imported checkpoints have none.
    """
    block = cfg.get("saelab") or {}
    return block.get("model_sha256") or (block.get("provenance") or {}).get("model_sha256")
