"""Run the chosen evaluations of one SAE (or every SAE of a sweep folder) into the results store."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import resultstore as results
from activations.loader import ActivationLoader, split_chunks
from activations.store import ActivationStore
from evaluation.features import FeatureStatsConfig
from sae.checkpoint import CFG_FILE, WEIGHTS_FILE, load_sae, read_cfg
from saelab_base.errors import UserError

EVALS = ("core", "loss", "features", "probing", "absorption")
DEFAULT_EVALS = ("core", "loss", "features")


@dataclass
class EvalConfig:
    """What to evaluate, on which activations, into which database."""

    sae: str
    """An SAE folder, or a sweep folder whose subfolders are SAE folders."""
    acts: str
    """The activation store (path or fsspec URL)."""
    db: str
    """The DuckDB results file (created when missing)."""
    evals: list[str] = field(default_factory=lambda: list(DEFAULT_EVALS))
    """Which evaluations: any of core, loss, features, probing, absorption."""
    hook: str | None = None
    """Hook to read; default: the one recorded in the SAE's cfg.json."""
    split: str = "test"
    """Store split for core metrics and loss: test (held-out tail), train or all."""
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
    probe_column: str = "source"
    """Label column of the store's corpus that the probing eval classifies."""
    probe_positive: str | None = None
    """Positive class of that column (one vs rest); None: the column must have two values."""
    device: str = "cpu"
    """Torch device."""

    def validate(self) -> None:
        unknown = [e for e in self.evals if e not in EVALS]
        if unknown or not self.evals:
            raise UserError(
                f"unknown eval {unknown[0] if unknown else '(none)'}: choose from {', '.join(EVALS)}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError(
                f"--max-tokens must be a positive number of tokens, got {self.max_tokens}; "
                "pass e.g. --max-tokens 100000, or leave it out to use the whole split"
            )
        if self.loss_sequences < 1:
            raise UserError(
                f"--loss-sequences must be at least 1, got {self.loss_sequences}; pass e.g. "
                "--loss-sequences 32, or leave loss out of --evals"
            )
        if self.batch_size < 1:
            raise UserError(
                f"batch_size must be a positive number of tokens, got {self.batch_size}"
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
) -> results.SAERecord:
    weights = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    block = cfg_json.get("saelab", {})
    sae_id = hashlib.sha256((weights + results.config_hash(cfg_json)).encode()).hexdigest()[:16]
    return results.SAERecord(
        sae_id=sae_id,
        name=folder.name,
        path=str(folder.resolve()),
        architecture=sae.architecture,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        hook=hook,
        model=cfg_json.get("model_name") or store.attrs.get("model"),
        model_sha256=block.get("model_sha256") or store.attrs.get("model_sha256"),
        cfg=cfg_json,
        weights_sha256=weights,
    )


def check_compatible(folder: Path, sae, cfg_json: dict, store: ActivationStore, hook: str) -> None:
    """Refuse an SAE and a store that come from different models, hooks or widths."""
    store.check_hook(hook)
    width = store.width(hook)
    if sae.d_in != width:
        raise UserError(
            f"SAE {folder.name} reads d_in={sae.d_in} but {hook} in the store has width {width}"
        )
    block = cfg_json.get("saelab", {})
    sae_hook = cfg_json.get("hook_name")
    if sae_hook and sae_hook != hook:
        raise UserError(
            f"SAE {folder.name} was trained on {sae_hook}, not {hook}; pass the matching --hook"
        )
    sae_sha = block.get("model_sha256")
    if sae_sha and sae_sha != store.attrs.get("model_sha256"):
        raise UserError(
            f"SAE {folder.name} was trained on another model's activations "
            f"({block.get('model', cfg_json.get('model_name'))}) than the store's ({store.attrs.get('model')})"
        )


def evaluate(cfg: EvalConfig, model=None, log=print) -> dict[str, dict[str, dict[str, float]]]:
    """Evaluate every SAE under `cfg.sae`; returns {sae name: {eval: metrics}}."""
    cfg.validate()
    store = ActivationStore(cfg.acts)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for folder in sae_folders(cfg.sae):
        cfg_json = read_cfg(folder)
        sae = load_sae(folder, device=cfg.device)
        hook = cfg.hook or cfg_json.get("hook_name")
        if not hook:
            raise UserError(f"SAE {folder.name} records no hook; pass --hook")
        check_compatible(folder, sae, cfg_json, store, hook)
        record = sae_record(folder, sae, cfg_json, store, hook)
        if any(e in cfg.evals for e in ("loss", "features")) and model is None:
            from activations.models import load_model

            model = load_model(store.attrs["model"], device=cfg.device)
            if model.weights_sha256 != store.attrs.get("model_sha256"):
                raise UserError(
                    f"the model {store.attrs['model']!r} found here differs from the one that filled the store"
                )
        out[folder.name] = {}
        for name in cfg.evals:
            t0 = time.perf_counter()
            metrics, tables, n_tokens, run_cfg = _RUNNERS[name](
                sae, store, hook, cfg, model, record.sae_id
            )
            run = results.EvalRun(
                sae_id=record.sae_id,
                eval=name,
                config=run_cfg,
                acts_url=cfg.acts,
                n_tokens=n_tokens,
                seconds=time.perf_counter() - t0,
                metrics=metrics,
                tables=tables,
            )
            results.write_eval_run(cfg.db, record, run)
            out[folder.name][name] = metrics
            log(
                f"saelab eval: {folder.name} {name}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:6])
            )
    return out


def _run_core(sae, store, hook, cfg: EvalConfig, model, sae_id: str):
    from evaluation.core import reconstruction_stats

    loader = ActivationLoader(
        store, hook, batch_size=cfg.batch_size, split=cfg.split, drop_last=False, prefetch=1
    )
    batches = loader if cfg.max_tokens is None else _capped(loader, cfg.max_tokens)
    stats = reconstruction_stats(sae, (b.to(cfg.device) for b in batches))
    metrics = stats.metrics()
    edges, counts, dead = stats.density_histogram()
    metrics.update({f"log10_density_hist_{i:02d}": float(c) for i, c in enumerate(counts)})
    run_cfg = {
        "split": cfg.split,
        "max_tokens": cfg.max_tokens,
        "loader": asdict(loader.cfg),
        "density_hist_edges": edges,
        "dead_latents": dead,
    }
    return metrics, None, stats.n, run_cfg


def _capped(batches, max_tokens: int):
    seen = 0
    for b in batches:
        if seen >= max_tokens:
            return
        yield b[: max_tokens - seen]
        seen += len(b)


def _run_loss(sae, store, hook, cfg: EvalConfig, model, sae_id: str):
    import numpy as np

    from evaluation.core import loss_stats

    chunks = split_chunks(store.committed_chunks(), cfg.split, 0.1)
    tokens, masks = [], []
    for c in chunks:
        tokens.append(store.read_tokens(c))
        masks.append(store.token_mask(c))
        if sum(len(t) for t in tokens) >= cfg.loss_sequences:
            break
    toks = torch.from_numpy(np.concatenate(tokens)[: cfg.loss_sequences]).long().to(cfg.device)
    mask = torch.from_numpy(np.concatenate(masks)[: cfg.loss_sequences]).to(cfg.device)
    stats = loss_stats(model.bridge, hook, lambda x: sae(x), toks, mask)
    run_cfg = {
        "split": cfg.split,
        "sequences": len(toks),
        "splice": "non-BOS, non-special positions only",
        "ce": "next-token, all positions",
    }
    return stats.metrics(), None, stats.n_tokens, run_cfg


def _run_features(sae, store, hook, cfg: EvalConfig, model, sae_id: str):
    from evaluation import dashboards
    from evaluation.features import feature_stats
    from evaluation.logits import logit_effects, unembedding

    chunks = split_chunks(store.committed_chunks(), cfg.feature_split, 0.1)
    stats = feature_stats(sae, store, hook, cfg.features, chunks=chunks)
    w_u, scale = unembedding(model.bridge)
    effects = logit_effects(sae.W_dec.detach().cpu(), w_u, scale)
    vocab = [model.tokenizer.decode([i]) for i in range(model.d_vocab)]
    results.write_vocab(cfg.db, model.weights_sha256, vocab)
    density = stats.density
    metrics = {
        "features_n_tokens": float(stats.n_tokens),
        "features_dead_fraction": float((density == 0).mean()),
        "features_too_few_fraction": float((stats.fire_counts < cfg.features.min_examples).mean()),
    }
    run_cfg = {
        "split": cfg.feature_split,
        "features": asdict(cfg.features),
        "quantile_convention": "equal-count bands by rank over a uniform reservoir sample",
        "histogram": "fixed log-spaced bins 1e-3..1e3",
        "logit_effects": "W_dec * final-norm scale @ W_U",
    }
    tables = {
        "features": dashboards.feature_rows(sae_id, stats, cfg.features.min_examples),
        "feature_examples": dashboards.example_rows(sae_id, stats),
        "feature_histograms": dashboards.histogram_rows(sae_id, stats, effects),
        "feature_logits": dashboards.logit_rows(sae_id, effects),
    }
    return metrics, tables, stats.n_tokens, run_cfg


def _run_probing(sae, store, hook, cfg: EvalConfig, model, sae_id: str):
    from evaluation import probing

    result = probing.source_probing(
        sae, store, hook, column=cfg.probe_column, positive=cfg.probe_positive
    )
    return result.metrics(), None, result.n_tokens, result.conventions()


def _run_absorption(sae, store, hook, cfg: EvalConfig, model, sae_id: str):
    from evaluation import absorption

    result = absorption.first_letter_absorption(sae, store, hook)
    return result.metrics(), None, result.n_tokens, result.conventions()


_RUNNERS = {
    "core": _run_core,
    "loss": _run_loss,
    "features": _run_features,
    "probing": _run_probing,
    "absorption": _run_absorption,
}
