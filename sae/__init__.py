"""SAE architectures (an open registry), the sweep trainer and checkpoint I/O.

from sae import make_config, TrainConfig, train
saes = train([make_config("topk", d_sae=4608, k=32),
              make_config("jumprelu", d_sae=4608, l0_coefficient=1e-3)],
             loader, TrainConfig(tokens=10_000_000), out="runs/sweep")

Names are resolved lazily, so `from sae.checkpoint import load_sae` (what the evaluators and
circuits use) never imports the trainer.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SAE": "sae.base",
    "Code": "sae.base",
    "StepContext": "sae.base",
    "TrainOutput": "sae.base",
    "load_sae": "sae.checkpoint",
    "save_sae": "sae.checkpoint",
    "SAEConfig": "sae.config",
    "TrainConfig": "sae.config",
    "REGISTRY": "sae.registry",
    "build_sae": "sae.registry",
    "config_from_dict": "sae.registry",
    "get_architecture": "sae.registry",
    "make_config": "sae.registry",
    "register_architecture": "sae.registry",
    "load_sweep": "sae.sweep",
    "Trainer": "sae.trainer",
    "train": "sae.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sae' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
