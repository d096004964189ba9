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
seeds = [0, 1, 2]            # ... each trained under three initialisation seeds
```

`seeds` (in an [[sae]] table or in [defaults]) trains the same config once per seed, in the
same pass over the same batches, so the copies differ only in their initialisation; each is
named `<name>-seed<s>`. The stability eval (`saelab eval --evals stability`) finds these seed
twins by their configs and measures how many latents they share.
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


def load_sweep(
    path: str | Path,
    seed: int = 0,
    seeds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[list[SAEConfig], dict[str, Any]]:
    """Parse a sweep file: the SAE configs and the [train] table (TrainConfig overrides).
    `seed`: the initialisation seed of every SAE that sets none; `seeds`: train every SAE of the
    file under each of these seeds (as `seeds` in its [defaults]); `overrides`: SAE config
    fields set on every SAE, over the file's values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"sweep file {path} is not valid TOML: {err}") from None
    return parse_sweep(data, str(path), seed=seed, seeds=seeds, overrides=overrides)


def parse_sweep(
    data: dict[str, Any],
    where: str = "sweep",
    seed: int = 0,
    seeds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[list[SAEConfig], dict[str, Any]]:
    unknown = sorted(set(data) - {"train", "defaults", "sae"})
    if unknown:
        raise UserError(f"{where}: unknown table(s) {', '.join(unknown)}; use train, defaults, sae")
    entries = data.get("sae", [])
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{where}: the sweep is empty; add at least one [[sae]] table")
    defaults = data.get("defaults", {})
    if seeds is not None:
        if "seeds" in defaults or any("seeds" in entry for entry in entries):
            raise UserError(
                f"{where} sets `seeds` and so does the run (--seeds); give the seeds once"
            )
        defaults = {**defaults, "seeds": list(seeds)}
    configs: list[SAEConfig] = []
    for entry in entries:
        for variant in _expand(entry, where):
            merged = {**defaults, **variant, **(overrides or {})}
            variant_seeds = merged.pop("seeds", None)
            if variant_seeds is not None and "seed" in merged:
                raise UserError(
                    f"{where}: an SAE sets both `seed` ({merged['seed']}) and `seeds`; give one"
                )
            merged.setdefault("seed", seed)
            config = config_from_dict(merged)
            config.validate()
            if variant_seeds is None:
                configs.append(config)
            else:
                configs += with_seeds([config], variant_seeds, where)
    train = data.get("train", {})
    _check_train_keys(train, where)
    return configs, train


def with_seeds(
    configs: list[SAEConfig], seeds: list[int] | None, where: str = "seeds"
) -> list[SAEConfig]:
    """Each config once per initialisation seed, named `<name>-seed<s>` (the configs as they
    are when `seeds` is None)."""
    if seeds is None:
        return list(configs)
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise UserError(
            f"{where}: `seeds` must be a non-empty list of whole numbers >= 0, e.g. [0, 1, 2]; "
            f"got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: `seeds` lists a seed twice ({seeds}); give distinct seeds")
    return [
        dataclasses.replace(c, seed=s, name=f"{c.resolved_name()}-seed{s}")
        for c in configs
        for s in seeds
    ]


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
