"""Architecture registry: name -> SAE class (its `config_class` is the config dataclass)."""

from __future__ import annotations

from typing import Any

from sae.architectures.batchtopk import BatchTopKSAE
from sae.architectures.gated import GatedSAE
from sae.architectures.jumprelu import JumpReLUSAE
from sae.architectures.matryoshka import MatryoshkaSAE
from sae.architectures.relu import ReLUSAE
from sae.architectures.topk import TopKSAE
from sae.base import SAE
from sae.config import SAEConfig
from saelab.errors import UserError

REGISTRY: dict[str, type[SAE]] = {
    cls.architecture: cls
    for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, MatryoshkaSAE)
}


def get_architecture(name: str) -> type[SAE]:
    """The SAE class registered as `name`; UserError listing the known ones otherwise."""
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
