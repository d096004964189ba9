"""SAE architectures (a registry), the sweep trainer and checkpoint I/O.

from sae import make_config, TrainConfig, train
saes = train([make_config("topk", d_sae=4608, k=32),
              make_config("jumprelu", d_sae=4608, l0_coefficient=1e-3)],
             loader, TrainConfig(tokens=10_000_000), out="runs/sweep")
"""

from sae.base import SAE, Code, StepContext, TrainOutput
from sae.checkpoint import load_sae, save_sae
from sae.config import SAEConfig, TrainConfig
from sae.registry import REGISTRY, build_sae, config_from_dict, get_architecture, make_config
from sae.sweep import load_sweep
from sae.trainer import Trainer, train

__all__ = [
    "REGISTRY",
    "SAE",
    "Code",
    "SAEConfig",
    "StepContext",
    "TrainConfig",
    "TrainOutput",
    "Trainer",
    "build_sae",
    "config_from_dict",
    "get_architecture",
    "load_sae",
    "load_sweep",
    "make_config",
    "save_sae",
    "train",
]
