"""The features eval: per-latent statistics and dashboard examples from one pass over the store
(`stats.py`), logit effects through the unembedding (`logits.py`), written as the results
store's per-feature tables (`dashboards.py`)."""

from __future__ import annotations

from dataclasses import asdict, fields

from saelab.evaluation.features.config import FeaturesSettings, FeatureStatsConfig
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSpec, Metric

__all__ = ["FeatureStatsConfig", "FeaturesSettings", "METRICS", "SPEC", "run"]


def _z(ctx: EvalContext):
    """The layer of an attention SAE's hook (`blocks.L.attn.hook_z`), else None."""
    import re

    match = re.match(r"^blocks\.(\d+)\.attn\.hook_z$", ctx.hook)
    return None if match is None else int(match.group(1))


def residual_directions(ctx: EvalContext):
    """The decoder rows as residual-stream directions: W_dec itself, or for an attention SAE
    (heads concatenated, before the output projection) W_dec @ W_O^T."""
    w_dec = ctx.sae.W_dec.detach().cpu()
    layer = _z(ctx)
    if layer is None:
        return w_dec
    w_o = ctx.model.bridge.blocks[layer].attn.o.weight.detach().float().cpu()  # [d_model, H*Dh]
    return w_dec.float() @ w_o.T


def run(ctx: EvalContext) -> EvalResult:
    from saelab.evaluation.features import dashboards
    from saelab.evaluation.features.logits import logit_effects, unembedding
    from saelab.evaluation.features.stats import feature_stats

    s: FeaturesSettings = ctx.settings
    cfg = FeatureStatsConfig(**{f.name: getattr(s, f.name) for f in fields(FeatureStatsConfig)})
    stats = feature_stats(ctx.sae, ctx.store, ctx.hook, cfg, chunks=ctx.chunks(s.split))
    w_u, scale = unembedding(ctx.model.bridge)
    effects = logit_effects(residual_directions(ctx), w_u, scale)
    tokenizer = ctx.model.tokenizer
    vocab = [tokenizer.decode([i]) for i in range(ctx.model.d_vocab)]
    density = stats.density
    metrics = {
        "features_n_tokens": float(stats.n_tokens),
        "features_dead_fraction": float((density == 0).mean()),
        "features_too_few_fraction": float((stats.fire_counts < cfg.min_examples).mean()),
    }
    conventions = {
        "split": s.split,
        "features": asdict(cfg),
        "quantile_convention": "equal-count bands by rank over a uniform reservoir sample",
        "histogram": "fixed log-spaced bins 1e-3..1e3",
        "logit_effects": "W_dec * final-norm scale @ W_U"
        + (" (attention SAE: W_dec @ W_O^T, into the residual stream, first)" if _z(ctx) else ""),
    }
    tables = {
        "features": dashboards.feature_rows(ctx.sae_id, stats, cfg.min_examples),
        "feature_examples": dashboards.example_rows(ctx.sae_id, stats),
        "feature_histograms": dashboards.histogram_rows(ctx.sae_id, stats, effects),
        "feature_logits": dashboards.logit_rows(ctx.sae_id, effects),
    }
    return EvalResult(metrics, stats.n_tokens, conventions, tables=tables, vocab=vocab)


_L = "lower"
METRICS = (
    Metric("features_n_tokens", "tokens the feature statistics read", None),
    Metric("features_dead_fraction", "fraction of latents that never fire on the features split", _L),
    Metric("features_too_few_fraction", "fraction of latents with fewer activations than min_examples", _L),
)  # fmt: skip

SPEC = EvalSpec(
    "features", "per-feature statistics and dashboards", run, METRICS, FeaturesSettings,
    needs_model=True, default=True,
)  # fmt: skip
