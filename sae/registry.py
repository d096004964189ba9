"""Architecture registry: name -> SAE class (its `config_class` is the config dataclass).

Each built-in architecture is one file of `saelab/sae/architectures/`, listed once in
`BUILTIN`. The registry is open: `register_architecture(MySAE)` from a notebook or another
package makes `MySAE.architecture` a name the trainer, sweeps, checkpoints and `saelab train
--arch` (with a flag for each of its config fields) accept; a package can also advertise its
classes under the entry-point group `saelab.architectures`.
"""

from __future__ import annotations

import importlib
from typing import Any

from saelab.base.errors import UserError
from saelab.base.plugins import load_plugins
from saelab.sae.base import SAE
from saelab.sae.config import SAEConfig

BUILTIN = (
    "saelab.sae.architectures.relu:ReLUSAE",
    "saelab.sae.architectures.topk:TopKSAE",
    "saelab.sae.architectures.batchtopk:BatchTopKSAE",
    "saelab.sae.architectures.jumprelu:JumpReLUSAE",
    "saelab.sae.architectures.gated:GatedSAE",
    "saelab.sae.architectures.matryoshka:MatryoshkaSAE",
    "saelab.sae.architectures.mutual_choice:MutualChoiceSAE",
    "saelab.sae.architectures.feature_choice:FeatureChoiceSAE",
    "saelab.sae.architectures.mp:MPSAE",
    "saelab.sae.architectures.gsae:GSAE",
    "saelab.sae.architectures.transcoder:Transcoder",
    "saelab.sae.architectures.clt:CrossLayerTranscoder",
)
"""The built-in architectures (module:class), in the order they are listed."""

REGISTRY: dict[str, type[SAE]] = {}


def register_architecture(cls: type[SAE], *, replace: bool = False) -> type[SAE]:
    """Add an SAE class under its `architecture` name (usable as a class decorator).

    The class needs `architecture` (a name) and `config_class` (an `SAEConfig` subclass).
    Registering a taken name is an error unless `replace=True`.
    """
    name = getattr(cls, "architecture", None)
    config_class = getattr(cls, "config_class", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `architecture` (its name)")
    if not (isinstance(config_class, type) and issubclass(config_class, SAEConfig)):
        raise ValueError(f"{cls.__name__}.config_class must be an SAEConfig subclass")
    if name in REGISTRY and REGISTRY[name] is not cls and not replace:
        raise ValueError(f"architecture {name!r} is already registered ({REGISTRY[name].__name__})")
    REGISTRY[name] = cls
    return cls


for _reference in BUILTIN:
    _module, _, _name = _reference.partition(":")
    register_architecture(getattr(importlib.import_module(_module), _name))


_plugins_loaded = False


def _load_entry_points() -> None:
    """Register the SAE classes other installed packages advertise under the entry-point group
    `saelab.architectures` (so `saelab train --arch NAME` finds them without an import). A plugin
    that fails to load is skipped with a warning."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    load_plugins("saelab.architectures", "architecture", REGISTRY, register_architecture)
    _plugins_loaded = True


def architectures() -> dict[str, type[SAE]]:
    """Every registered architecture by name, the installed plugins' included."""
    _load_entry_points()
    return dict(REGISTRY)


def get_architecture(name: str) -> type[SAE]:
    """The SAE class registered as `name`; UserError listing the known ones otherwise."""
    if name not in REGISTRY:
        _load_entry_points()
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def make_config(architecture: str, **fields: Any) -> SAEConfig:
    """Build the config dataclass of `architecture` from keyword fields."""
    return get_architecture(architecture).config_class.from_dict(fields)


def config_from_dict(data: dict[str, Any]) -> SAEConfig:
    """Build a config from a dict with an "architecture" key (a sweep entry, a cfg.json)."""
    if "architecture" not in data:
        raise UserError(f"an SAE entry lacks 'architecture'; known: {', '.join(sorted(REGISTRY))}")
    return make_config(
        data["architecture"], **{k: v for k, v in data.items() if k != "architecture"}
    )


def build_sae(cfg: SAEConfig, d_in: int | None = None) -> SAE:
    """Instantiate the SAE for a config (validates it first)."""
    return get_architecture(cfg.architecture)(cfg, d_in)
