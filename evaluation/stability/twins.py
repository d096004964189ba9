"""Seed twins: the other SAEs of a sweep folder trained from the same config under another seed
(`seeds = [...]` in a sweep file, or `saelab train --seeds`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.sae.checkpoint import trained_model_sha256
from saelab.sae.formats import CFG_FILE, read_json

IGNORED = ("seed", "name")
"""The config fields in which seed twins may differ (the seed, and the name that carries it)."""


def twin_key(cfg: dict[str, Any]) -> str | None:
    """What seed twins share, as one comparable string: the architecture and resolved config
    but for `IGNORED`, the hook, the model's weights and the tokens trained on. None for a
    checkpoint whose cfg.json has no saelab config (an imported SAE: its seed is unknown)."""
    block = cfg.get("saelab")
    if not isinstance(block, dict) or not isinstance(block.get("config"), dict):
        return None
    config = {k: v for k, v in block["config"].items() if k not in IGNORED}
    key = {
        "architecture": block.get("architecture"),
        "config": config,
        "hook": block.get("hook_name") or cfg.get("hook_name"),
        "model": trained_model_sha256(cfg) or block.get("model_name"),
        "trained_tokens": block.get("trained_tokens"),
    }
    return json.dumps(key, sort_keys=True, default=str)


def seed_of(cfg: dict[str, Any]) -> int | None:
    """The initialisation seed a saelab cfg.json records (None for an imported SAE)."""
    config = (cfg.get("saelab") or {}).get("config") or {}
    seed = config.get("seed")
    return seed if isinstance(seed, int) else None


@dataclass
class SeedTwins:
    """An SAE folder's seed twins and what its sweep folder holds."""

    folder: Path
    """The SAE folder."""
    seed: int | None
    """Its initialisation seed."""
    twins: list[Path] = field(default_factory=list)
    """Its seed twins (sibling SAE folders), by name."""
    twin_seeds: list[int] = field(default_factory=list)
    """Their seeds, in the same order."""
    sweep_has_twins: bool = False
    """Whether some other SAE of the same sweep folder has a seed twin (then this SAE simply
    was not trained under several seeds, and a sweep evaluation skips it)."""

    def missing(self) -> str:
        """Why there is no twin, and how to train some (one line)."""
        return (
            f"SAE {self.folder.name} has no seed twin: no other SAE in {self.folder.parent} was "
            "trained from the same config with another seed; train twins in one pass with "
            "`seeds = [0, 1]` in the sweep file's [[sae]] table (or `saelab train --seeds 0 1`), "
            "then evaluate the sweep folder"
        )


def find_twins(folder: str | Path) -> SeedTwins:
    """The seed twins of the SAE in `folder` among the SAE folders beside it."""
    folder = Path(folder).resolve()
    own = read_json(folder / CFG_FILE, what="an SAE folder")
    found = SeedTwins(folder, seed_of(own))
    key = twin_key(own)
    groups: dict[str, set[int]] = {}
    for sibling in sorted(folder.parent.glob(f"*/{CFG_FILE}")):
        other = sibling.parent
        try:
            cfg = read_json(sibling, what="an SAE folder")
        except Exception:  # a damaged sibling is the runner's business, not a twin
            continue
        other_key, other_seed = twin_key(cfg), seed_of(cfg)
        if other_key is None or other_seed is None:
            continue
        groups.setdefault(other_key, set()).add(other_seed)
        if other != folder and key is not None and other_key == key and other_seed != found.seed:
            found.twins.append(other)
            found.twin_seeds.append(other_seed)
    found.sweep_has_twins = any(len(seeds) > 1 for seeds in groups.values())
    return found
