"""Resolve what a steering run acts on: the SAE's row in the results store, its checkpoint, the
model it was trained on, its hook, and its latents' statistics (the strength unit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import resultstore as results
from saelab_base.errors import UserError

MODEL_WIDTH_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""Hooks as wide as the model (others' widths are not checked here)."""


@dataclass
class Target:
    row: dict
    """The SAE's `saes` row."""
    sae: object
    """The loaded SAE module."""
    model: object
    """The `activations.models.LoadedModel`."""
    hook: str
    stats: dict[int, dict]
    """feature -> its `features` row (max_act, mean_act, density ...)."""


def find_row(con, sae: str) -> dict:
    """An SAE row by folder (its registered path), id, id prefix or name."""
    folder = Path(sae).expanduser()
    if folder.is_dir():
        want = str(folder.resolve())
        rows = results.dicts(con.execute("SELECT * FROM saes WHERE path = ?", [want]))
        if not rows:
            raise UserError(
                f"SAE folder {sae!r} is not in the results database; evaluate it with the "
                "features eval first (its latents' statistics set the strength unit)"
            )
        return rows[0]
    return results.find_sae(con, sae)


def resolve(db: str, sae: str, model=None) -> Target:
    """Load the SAE and model of a stored SAE; one-line errors for moved or mismatched ones."""
    from activations.models import load_model
    from sae.checkpoint import load_sae

    with results.connect(db) as con:  # writable: an older file is migrated on the way
        row = find_row(con, sae)
        stats = results.feature_stats(con, row["sae_id"], list(range(int(row["d_sae"]))))
    path = Path(row["path"] or "")
    if not (path / "cfg.json").is_file():
        raise UserError(
            f"the checkpoint of SAE {row['name']} ({row['sae_id'][:12]}) was registered at "
            f"{row['path']!r}, which no longer holds it (moved or deleted); evaluate the SAE "
            "at its new place to register that path"
        )
    module = load_sae(path)
    if (module.d_in, module.d_sae) != (row["d_in"], row["d_sae"]):
        raise UserError(
            f"the checkpoint at {row['path']} is {module.d_in}→{module.d_sae}, but the results "
            f"database registered {row['d_in']}→{row['d_sae']}: it was replaced; evaluate it again"
        )
    if model is None:
        model = load_model(row["model"] or "smollm2-135m")
    check_compatible(row, module, model)
    return Target(row, module, model, row["hook"], stats)


def check_compatible(row: dict, sae, model) -> None:
    """The SAE must read this model at a hook of its width."""
    if row.get("model_sha256") and row["model_sha256"] != model.weights_sha256:
        raise UserError(
            f"SAE {row['name']} was trained on model weights {row['model_sha256'][:12]}, but "
            f"the loaded model {model.name} has {model.weights_sha256[:12]}; load the SAE's model"
        )
    model.validate_hooks([row["hook"]])
    model_width = row["hook"].endswith(MODEL_WIDTH_HOOKS)
    if model_width and sae.d_in != model.d_model:
        raise UserError(
            f"SAE {row['name']} reads {sae.d_in}-wide activations, but {row['hook']} of "
            f"{model.name} is {model.d_model} wide; use an SAE trained on this model"
        )
