"""SAE architectures (an open registry), the sweep trainer and checkpoint I/O.

from saelab.sae import make_config, TrainConfig, train
saes = train([make_config("topk", d_sae=4608, k=32),
              make_config("jumprelu", d_sae=4608, l0_coefficient=1e-3)],
             loader, TrainConfig(tokens=10_000_000), out="runs/sweep")

Names are resolved lazily, so `from saelab.sae.checkpoint import load_sae` (what the evaluators
and circuits use) never imports the trainer. One run of training (a store, SAEs, an output
folder) goes through `saelab.sae.run.run_training`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SAE": "saelab.sae.base",
    "Code": "saelab.sae.base",
    "StepContext": "saelab.sae.base",
    "TrainOutput": "saelab.sae.base",
    "load_sae": "saelab.sae.checkpoint",
    "save_sae": "saelab.sae.checkpoint",
    "SAEConfig": "saelab.sae.config",
    "TrainConfig": "saelab.sae.config",
    "REGISTRY": "saelab.sae.registry",
    "build_sae": "saelab.sae.registry",
    "config_from_dict": "saelab.sae.registry",
    "get_architecture": "saelab.sae.registry",
    "make_config": "saelab.sae.registry",
    "register_architecture": "saelab.sae.registry",
    "load_sweep": "saelab.sae.sweep",
    "Trainer": "saelab.sae.trainer",
    "train": "saelab.sae.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sae' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
