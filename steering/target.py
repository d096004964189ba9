"""Resolve what a steering run acts on: the SAE's row in the results store, its checkpoint
(checked against the weights the store registered), the model it was trained on, its hook, and
its latents' statistics (the strength unit)."""

from __future__ import annotations

from dataclasses import dataclass

from saelab import resultstore as results
from saelab.base.errors import UserError

MODEL_WIDTH_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""Hooks as wide as the model (others' widths are not checked here)."""


@dataclass
class Target:
    row: results.SAERow
    """The SAE's `saes` row."""
    sae: object
    """The loaded SAE module."""
    model: object
    """The `saelab.activations.models.LoadedModel`."""
    hook: str
    stats: dict[int, results.FeatureRow]
    """feature -> its `features` row (max_act, mean_act, density ...)."""


def resolve(store: results.ResultsStore, sae: str, model=None) -> Target:
    """Load a stored SAE (by folder, id, id prefix or name) and its model; one-line errors for
    a moved, replaced or mismatched checkpoint."""
    from saelab.activations.models import load_model
    from saelab.sae.checkpoint import WEIGHTS_FILE, load_sae

    row = results.find_sae(store, sae)
    stats = results.feature_stats(store, row.sae_id)
    module = load_sae(results.verified_folder(row, WEIGHTS_FILE))
    if (module.d_in, module.d_sae) != (row.d_in, row.d_sae):
        raise UserError(
            f"the checkpoint at {row.path} is {module.d_in}→{module.d_sae}, but the results "
            f"database registered {row.d_in}→{row.d_sae}: it was replaced; evaluate it again"
        )
    if model is None:
        model = load_model(row.model or "smollm2-135m")
    check_compatible(row, module, model)
    return Target(row, module, model, row.hook, stats)


def check_compatible(row: results.SAERow, sae, model) -> None:
    """The SAE must read this model at a hook of its width."""
    if row.model_sha256 and row.model_sha256 != model.weights_sha256:
        raise UserError(
            f"SAE {row.name} was trained on model weights {row.model_sha256[:12]}, but "
            f"the loaded model {model.name} has {model.weights_sha256[:12]}; load the SAE's model"
        )
    model.validate_hooks([row.hook])
    model_width = row.hook.endswith(MODEL_WIDTH_HOOKS)
    if model_width and sae.d_in != model.d_model:
        raise UserError(
            f"SAE {row.name} reads {sae.d_in}-wide activations, but {row.hook} of "
            f"{model.name} is {model.d_model} wide; use an SAE trained on this model"
        )
