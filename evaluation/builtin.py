"""The built-in evals, registered with their metric catalogues.

Each runner reads what it needs from the `EvalContext` and returns an `EvalResult`; the metric
definitions follow the conventions recorded with every run.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

import resultstore as results
from activations.loader import ActivationLoader, split_chunks
from evaluation.registry import EvalContext, EvalResult, EvalSpec, Metric, register_eval


def run_core(ctx: EvalContext) -> EvalResult:
    sae, store, hook, cfg = ctx.sae, ctx.store, ctx.hook, ctx.cfg
    from evaluation.core import reconstruction_stats

    loader = ActivationLoader(
        store,
        hook,
        batch_size=cfg.batch_size,
        split=cfg.split,
        test_fraction=cfg.test_fraction,
        drop_last=False,
        prefetch=1,
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
    return EvalResult(metrics, stats.n, run_cfg)


def _capped(batches, max_tokens: int):
    seen = 0
    for b in batches:
        if seen >= max_tokens:
            return
        yield b[: max_tokens - seen]
        seen += len(b)


def run_loss(ctx: EvalContext) -> EvalResult:
    sae, store, hook, cfg, model = ctx.sae, ctx.store, ctx.hook, ctx.cfg, ctx.model
    import numpy as np

    from evaluation.core import loss_stats

    chunks = split_chunks(store.committed_chunks(), cfg.split, cfg.test_fraction)
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
    return EvalResult(stats.metrics(), stats.n_tokens, run_cfg)


def run_features(ctx: EvalContext) -> EvalResult:
    sae, store, hook, cfg, model, sae_id = (
        ctx.sae,
        ctx.store,
        ctx.hook,
        ctx.cfg,
        ctx.model,
        ctx.sae_id,
    )
    from evaluation import dashboards
    from evaluation.features import feature_stats
    from evaluation.logits import logit_effects, unembedding

    chunks = split_chunks(store.committed_chunks(), cfg.feature_split, cfg.test_fraction)
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
    return EvalResult(metrics, stats.n_tokens, run_cfg, tables)


def run_probing(ctx: EvalContext) -> EvalResult:
    sae, store, hook, cfg = ctx.sae, ctx.store, ctx.hook, ctx.cfg
    from evaluation import probing

    chunks = split_chunks(store.committed_chunks(), cfg.probe_split, cfg.test_fraction)
    result = probing.source_probing(
        sae, store, hook, column=cfg.probe_column, positive=cfg.probe_positive, chunks=chunks
    )
    return EvalResult(
        result.metrics(), result.n_tokens, {**result.conventions(), "store_split": cfg.probe_split}
    )


def run_absorption(ctx: EvalContext) -> EvalResult:
    sae, store, hook = ctx.sae, ctx.store, ctx.hook
    from evaluation import absorption

    result = absorption.first_letter_absorption(sae, store, hook)
    return EvalResult(result.metrics(), result.n_tokens, result.conventions())


_H, _L = "higher", "lower"
CORE = (
    Metric("l0", "mean number of non-zero latents per token", None),
    Metric("mse", "mean over tokens of the squared error summed over dimensions", _L),
    Metric("explained_variance", "1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2 over the split", _H),
    Metric("fvu", "fraction of variance unexplained, 1 - explained_variance", _L),
    Metric("cosine", "mean over tokens of cos(x, x_hat)", _H),
    Metric("l2_ratio", "mean over tokens of ||x_hat|| / ||x|| (shrinkage below 1)", None),
    Metric("relative_reconstruction_bias", "E||x_hat||^2 / E<x, x_hat> (1 = unbiased)", None),
    Metric("dead_fraction", "fraction of latents that never fire on the split", _L),
    Metric("dense_fraction", "fraction of latents firing on more than 10% of tokens", _L),
    Metric("n_tokens", "tokens evaluated", None),
    Metric("log10_density_hist_{bin}", "latents per log10-density bin (edges in the run's config)", None),
)  # fmt: skip
LOSS = (
    Metric("ce_clean", "next-token cross-entropy of the clean model (nats)", None),
    Metric("ce_sae", "cross-entropy with the SAE's reconstruction spliced in (nats)", _L),
    Metric("ce_zero", "cross-entropy with the hook's activation zeroed (nats)", None),
    Metric("ce_loss_score", "fraction of loss recovered, (ce_zero - ce_sae) / (ce_zero - ce_clean)", _H),
    Metric("delta_loss", "ce_sae - ce_clean (nats)", _L),
    Metric("kl_sae", "mean KL(clean || spliced) of the next-token distribution (nats)", _L),
    Metric("kl_zero", "mean KL(clean || zero-ablated) (nats)", None),
    Metric("kl_score", "(kl_zero - kl_sae) / kl_zero", _H),
    Metric("loss_n_tokens", "next-token predictions evaluated", None),
)  # fmt: skip
FEATURES = (
    Metric("features_n_tokens", "tokens the feature statistics read", None),
    Metric("features_dead_fraction", "fraction of latents that never fire on the features split", _L),
    Metric("features_too_few_fraction", "fraction of latents with fewer activations than min_examples", _L),
)  # fmt: skip
PROBING = (
    Metric("probe_acc_full", "test accuracy of a logistic probe on the full activation", None),
    Metric("probe_acc_k{k}", "test accuracy of a logistic probe on the k latents whose class means differ most", _H),
    Metric("probe_chance_acc", "accuracy of always answering the majority class", None),
    Metric("probe_n_train", "training examples of the probes", None),
    Metric("probe_n_test", "test examples of the probes", None),
    Metric("probe_positive_fraction", "fraction of positive examples", None),
)  # fmt: skip
ABSORPTION = (
    Metric("absorption_mean", "mean over scored letters of the first-letter absorption rate", _L),
    Metric("absorption_letters_scored", "letters with enough whole-word tokens to score", None),
    Metric("absorption_letters_insufficient", "letters with too few whole-word tokens", None),
    Metric("absorption_n_tokens", "whole-word tokens read", None),
    Metric("absorption_rate_{letter}", "fraction of the letter's correctly probed test tokens that are absorbed", _L),
    Metric("absorption_n_{letter}", "test tokens of the letter scored", None),
)  # fmt: skip

for _spec in (
    EvalSpec("core", "reconstruction metrics on held-out tokens", run_core, CORE, default=True),
    EvalSpec("loss", "CE/KL loss with the SAE spliced in", run_loss, LOSS, needs_model=True, default=True),
    EvalSpec(
        "features", "per-feature statistics and dashboards", run_features, FEATURES,
        needs_model=True, default=True,
    ),
    EvalSpec("probing", "k-sparse probing of a corpus label", run_probing, PROBING),
    EvalSpec("absorption", "first-letter feature absorption", run_absorption, ABSORPTION),
):  # fmt: skip
    register_eval(_spec)
