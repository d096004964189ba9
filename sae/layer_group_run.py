"""Layer-group training (Group-SAE): one SAE (or sweep) per group of contiguous similar layers.

The pieces `run_layer_groups` (saelab.sae.run) uses when a run config sets `layer_groups`.
The layers' similarity is measured on the store's train split, the hooks are split into
contiguous groups
(`saelab.sae.layer_groups`), and each group is an ordinary training run on the rows of all its
layers (`MultiHookLoader`), saved to `out/layers-<first>-<last>/`. `out/layer_groups.json`
records the similarity matrix and the groups; each checkpoint's cfg.json names the first hook
of its group as `hook_name` (its default for evaluation) and lists every hook it covers under
`saelab.provenance.layer_group.hooks` (any of them is a valid `saelab eval --hook`).

Input scaling: the trainer's one scalar (`normalize_inputs`), measured on the group's mixed
rows and folded into the weights, so a group checkpoint reads every layer's raw activations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelab.base.errors import UserError

if TYPE_CHECKING:
    from saelab.sae.layer_groups import LayerGrouping

GROUPS_FILE = "layer_groups.json"


def group_folder_name(hooks: list[str]) -> str:
    """`layers-<first>-<last>` (the layer numbers of the group's first and last hooks)."""
    from saelab.sae.layer_groups import layer_index

    return f"layers-{layer_index(hooks[0])[0]}-{layer_index(hooks[-1])[0]}"


def group_hooks_of(cfg_json: dict[str, Any]) -> list[str] | None:
    """The hooks a layer-group checkpoint covers (None: not a layer-group checkpoint)."""
    block = cfg_json.get("saelab")
    provenance = block.get("provenance", {}) if isinstance(block, dict) else {}
    group = provenance.get("layer_group") if isinstance(provenance, dict) else None
    hooks = group.get("hooks") if isinstance(group, dict) else None
    return list(hooks) if isinstance(hooks, list) else None


def check_output(out: Path, resume: bool) -> None:
    """Refuse a file, or a non-empty folder unless resuming the layer-group run in it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; choose another output folder")
    if resume:
        if not (out / GROUPS_FILE).is_file():
            raise UserError(f"nothing to resume in {out}: no {GROUPS_FILE} there")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"{out} is not empty; choose a new or empty output folder (or --resume the "
            "layer-group run in it)"
        )


def grouping_for(cfg: Any, out: Path | None) -> LayerGrouping:
    """The grouping of a run config (`TrainRunConfig`): measured now, or on resume the one the
    run was started with."""
    from saelab.sae.layer_groups import LayerGrouping, group_layers

    assert cfg.hooks is not None and cfg.layer_groups is not None
    if cfg.resume and out is not None:
        saved = json.loads((out / GROUPS_FILE).read_text())
        if saved["hooks"] != list(cfg.hooks) or len(saved["groups"]) != cfg.layer_groups:
            raise UserError(
                f"the run in {out} grouped {len(saved['hooks'])} hooks into "
                f"{len(saved['groups'])} groups; resume with the same --hooks and --layer-groups"
            )
        return LayerGrouping(**saved)
    return group_layers(cfg.acts, list(cfg.hooks), cfg.layer_groups, cfg.group_tokens)


def has_state(folder: Path) -> bool:
    """Whether a group folder holds a training state to resume."""
    from saelab.sae.checkpoint import STATE_FILE

    return (folder / STATE_FILE).is_file()
