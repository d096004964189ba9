"""Run the chosen evaluations of one SAE (or every SAE of a sweep folder) into the results store."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab import resultstore as results
from saelab.activations.loader import TEST_FRACTION
from saelab.activations.store import ActivationStore
from saelab.base.config import check_device, check_fields
from saelab.base.errors import UserError
from saelab.evaluation.registry import default_evals, eval_names, get_eval
from saelab.evaluation.spec import EvalContext, EvalSkipped, check_result
from saelab.sae.checkpoint import CFG_FILE, WEIGHTS_FILE, load_sae, read_cfg, trained_model_sha256
from saelab.sae.layer_group_run import group_hooks_of


@dataclass
class EvalConfig:
    """What to evaluate, on which activations, into which database, and each eval's settings."""

    sae: str
    """An SAE folder, or a sweep folder whose subfolders are SAE folders."""
    acts: str
    """The activation store (path or fsspec URL)."""
    db: str
    """The DuckDB results file (created when missing)."""
    evals: list[str] = field(default_factory=default_evals)
    """Which evaluations: any registered eval (`saelab.evaluation.registry`; default core, loss,
    features)."""
    hook: str | None = None
    """Hook to read; default: the one recorded in the SAE's cfg.json."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Per-eval settings by eval name: that eval's settings dataclass (`CoreSettings`,
    `LossSettings`, ...) or a dict of its fields; an eval not named runs with its defaults."""
    test_fraction: float = TEST_FRACTION
    """Fraction of the store's committed chunks (its tail) held out as the test split."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self) -> None:
        check_fields(self)

    def settings_for(self, name: str) -> Any:
        """The settings the eval `name` runs with (its defaults where none were given)."""
        return get_eval(name).make_settings(self.settings.get(name))

    def validate(self) -> None:
        if not self.evals:
            raise UserError(f"no eval chosen: choose from {', '.join(eval_names())}")
        for name in [*self.evals, *self.settings]:
            get_eval(name)
        idle = [name for name in self.settings if name not in self.evals]
        if idle:
            raise UserError(
                f"settings are given for the {idle[0]} eval, which this run does not include "
                f"(evals: {', '.join(self.evals)}); add {idle[0]} to the evals or drop its settings"
            )
        for name in self.evals:
            settings = self.settings_for(name)
            if hasattr(settings, "validate"):
                try:
                    settings.validate()
                except UserError as err:
                    raise UserError(f"the {name} eval: {err}") from None
        if not 0 < self.test_fraction < 1:
            raise UserError(f"`test_fraction` must be in (0, 1), got {self.test_fraction}")
        check_device(self.device)
        from saelab.activations.store import refuse_inside_store

        refuse_inside_store(self.db, "the results database")


TRANSCODER_EVALS = ("core", "loss", "features")
"""The evals defined for a transcoder: reconstruction of its target, CE/KL with it spliced in
place of the MLP output, and the dashboards of its latents (which read its input hook)."""


CLT_EVALS = ("core", "loss")
"""The evals defined for a cross-layer transcoder: per-layer and pooled reconstruction of its
targets, and CE/KL with every MLP output of its range replaced at once."""


def check_clt_compatible(
    folder: Path, clt, cfg_json: dict, store: ActivationStore, hook: str
) -> None:
    """Refuse a cross-layer transcoder whose hooks the store lacks, whose widths differ, or
    that was trained on another model."""
    sae_sha = trained_model_sha256(cfg_json)
    if sae_sha and sae_sha != store.attrs.get("model_sha256"):
        raise UserError(
            f"cross-layer transcoder {folder.name} was trained on another model's activations "
            f"(weights {sae_sha[:12]}) than the store's ({store.attrs.get('model')})"
        )
    if hook not in clt.input_hooks:
        raise UserError(
            f"{folder.name} is a cross-layer transcoder reading {', '.join(clt.input_hooks)}; "
            f"it is evaluated on all of them at once: leave `hook` unset (got {hook})"
        )
    for hooks, width, what in (
        (clt.input_hooks, clt.d_in, "d_in"),
        (clt.target_hooks, clt.d_out, "d_out"),
    ):
        for h in hooks:
            store.check_hook(h)
            if store.width(h) != width:
                raise UserError(
                    f"cross-layer transcoder {folder.name} has {what}={width} but {h} in the "
                    f"store has width {store.width(h)}"
                )


def sae_folders(path: str) -> list[Path]:
    """The SAE folder itself, or every SAE subfolder of a sweep folder."""
    root = Path(path)
    if (root / CFG_FILE).is_file():
        return [root]
    found = sorted(p.parent for p in root.glob(f"*/{CFG_FILE}"))
    if not found:
        raise UserError(
            f"{path!r} is neither an SAE folder nor a sweep folder (no {CFG_FILE} found)"
        )
    return found


def sae_record(
    folder: Path, sae, cfg_json: dict, store: ActivationStore, hook: str
) -> results.SAERow:
    """The SAE's row; a layer-group SAE read at another of its hooks than its first is its own
    row (id and name with that hook), so each layer's metrics are kept apart."""
    if group_hooks_of(cfg_json) and hook != cfg_json.get("hook_name"):
        row = sae_record(folder, sae, {**cfg_json, "hook_name": hook}, store, hook)
        return dataclasses.replace(row, name=f"{folder.name}@{hook}")
    return results.record_for_folder(
        folder, WEIGHTS_FILE, cfg_json, architecture=sae.architecture, d_in=sae.d_in,
        d_sae=sae.d_sae, hook=hook,
        model=cfg_json.get("model_name") or store.attrs.get("model"),
        model_sha256=trained_model_sha256(cfg_json) or store.attrs.get("model_sha256"),
    )  # fmt: skip


def check_compatible(folder: Path, sae, cfg_json: dict, store: ActivationStore, hook: str) -> None:
    """Refuse an SAE and a store that come from different models, hooks or widths."""
    store.check_hook(hook)
    width = store.width(hook)
    if sae.d_in != width:
        raise UserError(
            f"SAE {folder.name} reads d_in={sae.d_in} but {hook} in the store has width {width}"
        )
    sae_hook = cfg_json.get("hook_name")
    group = group_hooks_of(cfg_json)
    if group is not None and hook not in group:
        raise UserError(
            f"SAE {folder.name} was trained on the layer group {', '.join(group)}, not on "
            f"{hook}; give one of its hooks"
        )
    if group is None and sae_hook and sae_hook != hook:
        raise UserError(
            f"SAE {folder.name} was trained on {sae_hook}, not {hook}; give the matching `hook`"
        )
    sae_sha = trained_model_sha256(cfg_json)
    if sae_sha and sae_sha != store.attrs.get("model_sha256"):
        raise UserError(
            f"SAE {folder.name} was trained on another model's activations "
            f"({cfg_json.get('model_name')}, weights {sae_sha[:12]}) than the store's "
            f"({store.attrs.get('model')}, weights {str(store.attrs.get('model_sha256'))[:12]})"
        )


def evaluate(cfg: EvalConfig, model=None, log=print) -> dict[str, dict[str, dict[str, float]]]:
    """Evaluate every SAE under `cfg.sae`; returns {sae name: {eval: metrics}}."""
    cfg.validate()
    store = ActivationStore(cfg.acts)
    db = results.ResultsStore(cfg.db, mode="write")
    out: dict[str, dict[str, dict[str, float]]] = {}
    folders = sae_folders(cfg.sae)
    failed: dict[str, str] = {}
    for folder in folders:
        try:
            model = _evaluate_one(folder, cfg, store, db, model, out, log)
        except UserError as err:
            if len(folders) == 1:
                raise
            # One damaged SAE of a sweep must not stop the others; it is reported at the end.
            failed[folder.name] = str(err)
            out.pop(folder.name, None)
            log(f"saelab eval: {folder.name}: skipped: {err}")
    if failed:
        raise UserError(
            f"{len(failed)} of {len(folders)} SAEs could not be evaluated "
            f"({'; '.join(f'{k}: {v}' for k, v in failed.items())}); the other "
            f"{len(folders) - len(failed)} were written to {cfg.db}"
        )
    return out


def _evaluate_one(
    folder: Path, cfg: EvalConfig, store: ActivationStore, db: results.ResultsStore, model, out, log
):
    """Evaluate one SAE folder into `out` and the database; returns the model (loaded once)."""
    cfg_json = read_cfg(folder)
    sae = load_sae(folder, device=cfg.device)
    hook = cfg.hook or cfg_json.get("hook_name")
    if not hook:
        raise UserError(f"SAE {folder.name} records no hook; give the `hook` to read")
    if hasattr(sae, "target_hooks"):
        check_clt_compatible(folder, sae, cfg_json, store, hook)
    else:
        check_compatible(folder, sae, cfg_json, store, hook)
    record = sae_record(folder, sae, cfg_json, store, hook)
    specs = [get_eval(name) for name in cfg.evals]
    if any(spec.needs_model for spec in specs) and model is None:
        from saelab.activations.models import load_model

        model = load_model(store.attrs["model"], device=cfg.device)
        if model.weights_sha256 != store.attrs.get("model_sha256"):
            raise UserError(
                f"the model {store.attrs['model']!r} found here differs from the one that filled the store"
            )
    out[folder.name] = {}
    for spec in specs:
        ctx = EvalContext(
            sae, store, hook, cfg.settings_for(spec.name), model, record.sae_id,
            cfg.test_fraction, cfg.device, folder,
        )  # fmt: skip
        if hasattr(sae, "target_hooks") and spec.name not in CLT_EVALS:
            log(
                f"saelab eval: {folder.name} {spec.name}: skipped: a cross-layer transcoder "
                f"reconstructs {len(sae.target_hooks)} MLP outputs from {len(sae.input_hooks)} "
                f"inputs; the {spec.name} eval is defined for one-hook dictionaries only "
                f"(cross-layer transcoders get {', '.join(CLT_EVALS)})"
            )
            continue
        if getattr(sae, "target_hook", None) and spec.name not in TRANSCODER_EVALS:
            log(
                f"saelab eval: {folder.name} {spec.name}: skipped: a transcoder reconstructs "
                f"{sae.target_hook}, not the hook it reads; the {spec.name} eval is defined for "
                f"SAEs only (transcoders get {', '.join(TRANSCODER_EVALS)})"
            )
            continue
        t0 = time.perf_counter()
        try:
            result = spec.run(ctx)
        except EvalSkipped as why:
            log(f"saelab eval: {folder.name} {spec.name}: skipped: {why}")
            continue
        check_result(spec, result, sae.d_sae)
        run = results.EvalRun(
            sae_id=record.sae_id,
            eval=spec.name,
            config=result.conventions,
            acts_url=cfg.acts,
            n_tokens=result.n_tokens,
            seconds=time.perf_counter() - t0,
            metrics=result.metrics,
            intervals=result.intervals,
            latent_metrics=result.latent_metrics,
            tables=result.tables,
        )
        if result.vocab is not None:
            results.write_vocab(db, model.weights_sha256, result.vocab)
        results.write_eval_run(db, record, run)
        if result.feature_heads is not None:
            results.write_feature_heads(db, record.sae_id, result.feature_heads)
        out[folder.name][spec.name] = result.metrics
        log(
            f"saelab eval: {folder.name} {spec.name}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in list(result.metrics.items())[:6])
        )
    return model
