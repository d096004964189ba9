"""Reads of the per-feature rows the features eval wrote: statistics, example windows,
histograms, logit effects, and one latent's whole dashboard (the app's feature page and
`saelab.Results.feature`)."""

from __future__ import annotations

from dataclasses import dataclass

from saelab.base.errors import UserError
from saelab.resultstore.autointerp import ExplainedLatent, explained
from saelab.resultstore.evals import latent_metrics
from saelab.resultstore.rows import (
    FeatureExampleRow,
    FeatureHistogramRow,
    FeatureLogitRow,
    FeatureRow,
    LatentMetricRow,
    SAERow,
)
from saelab.resultstore.saes import sae_by_id, token_strings
from saelab.resultstore.store import ResultsStore


def feature_stats(
    store: ResultsStore, sae_id: str, features: list[int] | None = None
) -> dict[int, FeatureRow]:
    """Statistics by latent (None: every latent of the SAE)."""
    if features is None:
        rows = store.select(FeatureRow, "sae_id = ?", [sae_id], order="feature")
    else:
        rows = store.select(
            FeatureRow, "sae_id = ? AND feature IN (SELECT unnest(?))",
            [sae_id, [int(f) for f in features]], order="feature",
        )  # fmt: skip
    return {r.feature: r for r in rows}


def feature_examples(
    store: ResultsStore, sae_id: str, features: list[int]
) -> list[FeatureExampleRow]:
    """Every stored example window of these latents."""
    return store.select(
        FeatureExampleRow, "sae_id = ? AND feature IN (SELECT unnest(?))",
        [sae_id, [int(f) for f in features]], order="feature, kind, band, rank",
    )  # fmt: skip


def feature_histograms(store: ResultsStore, sae_id: str, feature: int) -> list[FeatureHistogramRow]:
    return store.select(
        FeatureHistogramRow, "sae_id = ? AND feature = ?", [sae_id, int(feature)], order="kind"
    )


def feature_logits(store: ResultsStore, sae_id: str, feature: int) -> list[FeatureLogitRow]:
    """Top (promoted) and bottom (suppressed) logit effects, by rank."""
    return store.select(
        FeatureLogitRow, "sae_id = ? AND feature = ?", [sae_id, int(feature)], order="side, rank"
    )


@dataclass
class FeatureDashboard:
    """Everything stored about one latent."""

    sae: SAERow
    """The SAE the latent belongs to."""
    feature: int
    """The latent."""
    stats: FeatureRow
    """Its density, activations and flags."""
    examples: list[FeatureExampleRow]
    """Its stored windows: top, quantile bands, random, non-activating."""
    histograms: list[FeatureHistogramRow]
    """Its activation and logit-effect histograms."""
    logits: list[FeatureLogitRow]
    """The tokens its decoder direction promotes and suppresses most."""
    tokens: dict[int, str]
    """The stored string of every token id in the examples and logit effects."""
    explanations: list[ExplainedLatent]
    latent_metrics: list[LatentMetricRow]
    """Per-latent values of the evals that declare them."""


def feature_dashboard(store: ResultsStore, sae_id: str, feature: int) -> FeatureDashboard:
    """One latent's dashboard (one connection for all its reads)."""
    with store.session():
        sae = sae_by_id(store, sae_id)
        if sae is None:
            raise UserError(f"no SAE {sae_id!r} in the results database {store.path}")
        stats = feature_stats(store, sae.sae_id, [feature]).get(int(feature))
        if stats is None:
            if not feature_stats_exist(store, sae.sae_id):
                raise UserError(
                    f"SAE {sae.name} has no feature statistics in {store.path}; run "
                    "`saelab eval --evals features` on it first"
                )
            raise UserError(
                f"feature {feature} is out of range for SAE {sae.name} (0 … {sae.d_sae - 1})"
            )
        examples = feature_examples(store, sae.sae_id, [feature])
        logits = feature_logits(store, sae.sae_id, feature)
        ids = {t for e in examples for t in e.tokens} | {r.token_id for r in logits}
        return FeatureDashboard(
            sae=sae,
            feature=int(feature),
            stats=stats,
            examples=examples,
            histograms=feature_histograms(store, sae.sae_id, feature),
            logits=logits,
            tokens=token_strings(store, sae.model_sha256 or "", sorted(ids)),
            explanations=explained(store, sae.sae_id, feature),
            latent_metrics=latent_metrics(store, sae.sae_id, feature),
        )


def feature_stats_exist(store: ResultsStore, sae_id: str) -> bool:
    """Whether the features eval has run on the SAE."""
    return bool(store.query("SELECT 1 AS one FROM features WHERE sae_id = ? LIMIT 1", [sae_id]))


def density_histogram(store: ResultsStore, sae_id: str, bins_per_decade: int = 4) -> list[dict]:
    """Counts of the SAE's live latents per log10-density bin (`lo`, `n`)."""
    return store.query(
        "SELECT floor(log10_density * ?) / ? AS lo, count(*) AS n FROM features "
        "WHERE sae_id = ? AND NOT dead GROUP BY lo ORDER BY lo",
        [bins_per_decade, float(bins_per_decade), sae_id],
    )


def random_feature(
    store: ResultsStore, sae_id: str, seed: int, alive_only: bool = True
) -> int | None:
    """A pseudo-random latent (alive ones first), reproducible for a seed."""
    where = "AND NOT dead" if alive_only else ""  # a constant
    rows = store.query(
        f"SELECT feature FROM features WHERE sae_id = ? {where} ORDER BY hash(feature + ?) LIMIT 1",
        [sae_id, int(seed)],
    )
    return int(rows[0]["feature"]) if rows else None


def default_feature(store: ResultsStore, sae_id: str) -> int | None:
    """The latent every page opens when none is named (the Feature page, the pickers, the
    steering playground): one rule, so a link from one page lands on the latent the next shows.

    Live (it fired in the features eval, so it has examples and a strength unit, max_act > 0);
    latents that are neither dense nor short of examples before those that are; explained
    ones first, best mean score first; then the most often active. None when the SAE has no
    live latent (or no feature statistics)."""
    rows = store.query(
        "SELECT f.feature FROM features f LEFT JOIN ("
        "  SELECT e.feature, avg(s.value) AS score FROM explanations e"
        "  LEFT JOIN scores s ON s.sae_id = e.sae_id AND s.feature = e.feature"
        "   AND s.explainer = e.explainer AND s.status = 'ok'"
        "  WHERE e.sae_id = ? AND e.status = 'ok' AND e.explanation IS NOT NULL"
        "  GROUP BY e.feature"
        ") x ON x.feature = f.feature "
        "WHERE f.sae_id = ? AND NOT f.dead AND f.max_act > 0 "
        "ORDER BY coalesce(f.dense, false) OR coalesce(f.too_few_examples, false), "
        "x.feature IS NULL, x.score DESC NULLS LAST, f.n_active DESC, f.feature LIMIT 1",
        [sae_id, sae_id],
    )
    return int(rows[0]["feature"]) if rows else None
