"""Rows owned by auto-interpretation: explanations, scores, runs and the LLM response cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saelab.resultstore.rows import AutointerpRunRow, ExplanationRow, LLMCacheRow, ScoreRow
from saelab.resultstore.store import ResultsStore, insert

INTERP_TABLES = ("explanations", "scores")


@dataclass
class ExplainedLatent:
    """One explanation of a latent with its scores."""

    explanation: ExplanationRow
    """The explainer's row."""
    scores: list[ScoreRow] = field(default_factory=list)
    """Every scorer's row for this explanation."""


def finished_features(store: ResultsStore, sae_id: str, config_hash: str, n_rows: int) -> set[int]:
    """Latents whose explanation and score rows (n_rows of them) came from this configuration."""
    rows = store.query(
        "SELECT feature FROM (SELECT sae_id, feature, config_hash FROM explanations UNION ALL "
        "SELECT sae_id, feature, config_hash FROM scores) WHERE sae_id = ? AND config_hash = ? "
        "GROUP BY feature HAVING count(*) = ?",
        [sae_id, config_hash, n_rows],
    )
    return {r["feature"] for r in rows}


def cached_responses(store: ResultsStore, sae_id: str, features: list[int]) -> dict[str, str]:
    rows = store.select(
        LLMCacheRow, "sae_id = ? AND feature IN (SELECT unnest(?))", [sae_id, list(features)]
    )
    return {r.key: r.response_json for r in rows}


@dataclass
class InterpBatch:
    """Finished latents of one auto-interp run, written together in one transaction."""

    explanations: list[ExplanationRow]
    scores: list[ScoreRow]
    cache: list[LLMCacheRow]
    run: AutointerpRunRow
    """The run's row (counters as they stand now; `message` says why it stopped, if it did not
    finish)."""


def write_interp_batch(store: ResultsStore, batch: InterpBatch) -> None:
    """Replace the explanation and score rows with these keys, add cache entries, update the
    run's row, in one transaction. Each row replaces only the row with its own key (its
    explainer, and for scores its scorer): a scorer run later on its own never erases another's."""
    with store.transaction() as con:
        insert(con, batch.explanations, conflict="replace")
        insert(con, batch.scores, conflict="replace")
        insert(con, batch.cache, conflict="replace")
        insert(con, [batch.run], conflict="update")


def autointerp_runs(store: ResultsStore, sae_id: str | None = None) -> list[AutointerpRunRow]:
    if sae_id is None:
        return store.select(AutointerpRunRow, order="started_at")
    return store.select(AutointerpRunRow, "sae_id = ?", [sae_id], order="started_at")


def explanations(store: ResultsStore, sae_id: str, feature: int) -> list[ExplanationRow]:
    return store.select(
        ExplanationRow, "sae_id = ? AND feature = ?", [sae_id, int(feature)], order="explainer"
    )


def scores(store: ResultsStore, sae_id: str, feature: int | None = None) -> list[ScoreRow]:
    """Score rows of one SAE (one latent's, when given)."""
    if feature is None:
        return store.select(ScoreRow, "sae_id = ?", [sae_id], order="feature, explainer, scorer")
    return store.select(
        ScoreRow, "sae_id = ? AND feature = ?", [sae_id, int(feature)], order="explainer, scorer"
    )


def explained(store: ResultsStore, sae_id: str, feature: int) -> list[ExplainedLatent]:
    """Each explanation of the latent with its scores."""
    with store.session():
        found = explanations(store, sae_id, feature)
        all_scores = scores(store, sae_id, feature)
    return [
        ExplainedLatent(e, [s for s in all_scores if s.explainer == e.explainer]) for e in found
    ]


PREFERRED_EXPLAINERS = ("llm", "examples", "baseline")
"""Whose explanation a page or a label shows when a latent has several: an LLM's (written only
when one was asked for), then the examples explainer's (the offline default, which beats the
token list on embedding scores), then the token list; any other explainer after these."""
_PREFERENCE = (
    "CASE explainer WHEN 'llm' THEN 0 WHEN 'examples' THEN 1 WHEN 'baseline' THEN 2 ELSE 3 END, "
    "explainer"
)  # the SQL of PREFERRED_EXPLAINERS (a constant)


def stored_explanation(
    store: ResultsStore, sae_id: str, feature: int, explainer: str | None = None
) -> str | None:
    """The latent's explanation by `explainer` (None: the preferred one there is), when one
    was written and read."""
    where = "sae_id = ? AND feature = ? AND status = 'ok' AND explanation IS NOT NULL"
    params: list[Any] = [sae_id, int(feature)]
    if explainer is not None:
        where += " AND explainer = ?"
        params.append(explainer)
    rows = store.select(ExplanationRow, where, params, order=_PREFERENCE, limit=1)
    return rows[0].explanation if rows else None


def explanation_texts(store: ResultsStore, sae_id: str, features: list[int]) -> dict[int, str]:
    """One explanation per latent (the preferred explainer's, `PREFERRED_EXPLAINERS`), for
    lists of latents."""
    rows = store.query(
        f"SELECT feature, first(explanation ORDER BY {_PREFERENCE}) AS text FROM explanations "
        "WHERE sae_id = ? AND status = 'ok' AND feature IN (SELECT unnest(?)) GROUP BY feature",
        [sae_id, [int(f) for f in features]],
    )
    return {r["feature"]: r["text"] for r in rows}


def interp_scores(store: ResultsStore, sae_id: str | None = None) -> list[dict]:
    """Score rows joined with their explanation (reports, notebooks)."""
    query = (
        "SELECT s.*, e.explanation, e.status AS explanation_status FROM scores s "
        "LEFT JOIN explanations e USING (sae_id, feature, explainer)"
    )
    params: list[Any] = []
    if sae_id:
        query += " WHERE s.sae_id = ?"
        params.append(sae_id)
    return store.query(query + " ORDER BY s.feature, s.explainer, s.scorer", params)


def score_summary(store: ResultsStore, sae_ids: list[str]) -> list[dict]:
    """Mean score per (SAE, explainer, scorer) over the latents that scored: `mean`, `n`."""
    return store.query(
        "SELECT sae_id, explainer, scorer, avg(value) AS mean, count(*) AS n "
        "FROM scores WHERE status = 'ok' AND value IS NOT NULL "
        "AND sae_id IN (SELECT unnest(?)) GROUP BY ALL ORDER BY explainer, scorer",
        [list(sae_ids)],
    )


def scorer_names(store: ResultsStore, sae_id: str) -> list[str]:
    rows = store.query(
        "SELECT DISTINCT scorer FROM scores WHERE sae_id = ? ORDER BY scorer", [sae_id]
    )
    return [r["scorer"] for r in rows]
