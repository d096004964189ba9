"""Run the chosen evaluations of one SAE (or every SAE of a sweep folder) into the results store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import resultstore as results
from activations.loader import TEST_FRACTION
from activations.store import ActivationStore
from evaluation.features import FeatureStatsConfig
from evaluation.registry import EvalContext, check_result, default_evals, eval_names, get_eval
from sae.checkpoint import CFG_FILE, WEIGHTS_FILE, load_sae, read_cfg, trained_model_sha256
from saelab_base.errors import UserError


@dataclass
class EvalConfig:
    """What to evaluate, on which activations, into which database."""

    sae: str
    """An SAE folder, or a sweep folder whose subfolders are SAE folders."""
    acts: str
    """The activation store (path or fsspec URL)."""
    db: str
    """The DuckDB results file (created when missing)."""
    evals: list[str] = field(default_factory=default_evals)
    """Which evaluations: any registered eval (`evaluation.registry`; default core, loss, features)."""
    hook: str | None = None
    """Hook to read; default: the one recorded in the SAE's cfg.json."""
    split: str = "test"
    """Store split for core metrics and loss: test (held-out tail), train or all."""
    test_fraction: float = TEST_FRACTION
    """Fraction of the store's committed chunks (its tail) held out as the test split."""
    max_tokens: int | None = None
    """Cap on tokens for the core metrics (None: the whole split)."""
    batch_size: int = 4096
    """Tokens per batch for the core metrics."""
    loss_sequences: int = 32
    """Sequences for the CE/KL loss evaluation (needs the model)."""
    feature_split: str = "all"
    """Store split the feature statistics and dashboards read."""
    features: FeatureStatsConfig = field(default_factory=FeatureStatsConfig)
    """Example counts and windows for the dashboards."""
    probe_split: str = "all"
    """Store split whose sequences the probing eval splits into its own train and test sets
    ("test" reads a tenth of the store: faster, noisier)."""
    probe_column: str = "source"
    """Label column of the store's corpus that the probing eval classifies."""
    probe_positive: str | None = None
    """Positive class of that column (one vs rest); None: the column must have two values."""
    device: str = "cpu"
    """Torch device."""

    def validate(self) -> None:
        if not self.evals:
            raise UserError(f"no eval chosen: choose from {', '.join(eval_names())}")
        for name in self.evals:
            get_eval(name)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError(
                f"`max_tokens` must be a positive number of tokens, got {self.max_tokens}; "
                "give e.g. 100000, or leave it unset to use the whole split"
            )
        if self.loss_sequences < 1:
            raise UserError(
                f"`loss_sequences` must be at least 1, got {self.loss_sequences}; give e.g. 32, "
                "or leave loss out of `evals`"
            )
        if self.batch_size < 1:
            raise UserError(
                f"batch_size must be a positive number of tokens, got {self.batch_size}"
            )
        from activations.store import refuse_inside_store

        refuse_inside_store(self.db, "the results database")


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
) -> results.SAERecord:
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
    if sae_hook and sae_hook != hook:
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
    out: dict[str, dict[str, dict[str, float]]] = {}
    folders = sae_folders(cfg.sae)
    failed: dict[str, str] = {}
    for folder in folders:
        try:
            model = _evaluate_one(folder, cfg, store, model, out, log)
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


def _evaluate_one(folder: Path, cfg: EvalConfig, store: ActivationStore, model, out, log):
    """Evaluate one SAE folder into `out` and the database; returns the model (loaded once)."""
    cfg_json = read_cfg(folder)
    sae = load_sae(folder, device=cfg.device)
    hook = cfg.hook or cfg_json.get("hook_name")
    if not hook:
        raise UserError(f"SAE {folder.name} records no hook; give the `hook` to read")
    check_compatible(folder, sae, cfg_json, store, hook)
    record = sae_record(folder, sae, cfg_json, store, hook)
    specs = [get_eval(name) for name in cfg.evals]
    if any(spec.needs_model for spec in specs) and model is None:
        from activations.models import load_model

        model = load_model(store.attrs["model"], device=cfg.device)
        if model.weights_sha256 != store.attrs.get("model_sha256"):
            raise UserError(
                f"the model {store.attrs['model']!r} found here differs from the one that filled the store"
            )
    out[folder.name] = {}
    ctx = EvalContext(sae, store, hook, cfg, model, record.sae_id)
    for spec in specs:
        t0 = time.perf_counter()
        result = spec.run(ctx)
        check_result(spec, result)
        run = results.EvalRun(
            sae_id=record.sae_id,
            eval=spec.name,
            config=result.conventions,
            acts_url=cfg.acts,
            n_tokens=result.n_tokens,
            seconds=time.perf_counter() - t0,
            metrics=result.metrics,
            tables=result.tables,
        )
        results.write_eval_run(cfg.db, record, run)
        out[folder.name][spec.name] = result.metrics
        log(
            f"saelab eval: {folder.name} {spec.name}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in list(result.metrics.items())[:6])
        )
    return model
