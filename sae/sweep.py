"""Sweep files (TOML): many SAE variants for one hook, trained in one pass over the data.

```toml
[train]                      # TrainConfig fields (optional)
tokens = 20_000_000
hook = "blocks.8.hook_resid_post"

[defaults]                   # fields applied to every SAE unless it sets its own
d_sae = 4608

[[sae]]
architecture = "topk"
k = 32

[[sae]]
architecture = "relu"
grid = { l1_coefficient = [0.5, 1.0, 2.0] }   # one SAE per combination of the grid
```
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from saelab.base.errors import UserError
from saelab.sae.config import SAEConfig, TrainConfig
from saelab.sae.registry import config_from_dict

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def load_sweep(path: str | Path) -> tuple[list[SAEConfig], dict[str, Any]]:
    """Parse a sweep file: the SAE configs and the [train] table (TrainConfig overrides)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"sweep file {path} is not valid TOML: {err}") from None
    return parse_sweep(data, str(path))


def parse_sweep(
    data: dict[str, Any], where: str = "sweep"
) -> tuple[list[SAEConfig], dict[str, Any]]:
    unknown = sorted(set(data) - {"train", "defaults", "sae"})
    if unknown:
        raise UserError(f"{where}: unknown table(s) {', '.join(unknown)}; use train, defaults, sae")
    entries = data.get("sae", [])
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{where}: the sweep is empty; add at least one [[sae]] table")
    defaults = data.get("defaults", {})
    configs: list[SAEConfig] = []
    for entry in entries:
        for variant in _expand(entry, where):
            merged = {**defaults, **variant}
            config = config_from_dict(merged)
            config.validate()
            configs.append(config)
    train = data.get("train", {})
    _check_train_keys(train, where)
    return configs, train


def _expand(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    grid = entry.get("grid", {})
    base = {k: v for k, v in entry.items() if k != "grid"}
    if not grid:
        return [base]
    if not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{where}: every grid entry must be a non-empty list")
    keys = list(grid)
    return [
        {**base, **dict(zip(keys, combo, strict=True))}
        for combo in itertools.product(*grid.values())
    ]


def _check_train_keys(train: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(train) - known)
    if unknown:
        raise UserError(
            f"{where}: unknown [train] option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def apply_train_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `cfg` with a sweep file's [train] values."""
    values = dict(overrides)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(values["adam_betas"])
    return dataclasses.replace(cfg, **values)
