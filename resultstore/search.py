"""Searches over latents: by explanation text, by a token that activates them, by density and
score ranges (the app's Search page). Every query is bounded by a LIMIT."""

from __future__ import annotations

from typing import Any

from saelab.resultstore.store import ResultsStore


def search_explanations(
    store: ResultsStore, sae_id: str, text: str, limit: int = 100
) -> list[dict]:
    """Latents whose explanation contains `text` (case-insensitive, no wildcards): `feature`,
    `explainer`, `explanation`, `density`, `best_score`."""
    return store.query(
        "SELECT e.feature, e.explainer, e.explanation, f.density, "
        "(SELECT max(s.value) FROM scores s WHERE s.sae_id = e.sae_id "
        " AND s.feature = e.feature AND s.explainer = e.explainer) AS best_score "
        "FROM explanations e LEFT JOIN features f USING (sae_id, feature) "
        "WHERE e.sae_id = ? AND contains(lower(e.explanation), lower(?)) "
        "ORDER BY best_score DESC NULLS LAST, e.feature LIMIT ?",
        [sae_id, text, int(limit)],
    )


def token_ids_for(
    store: ResultsStore, model_sha256: str, text: str, ignore_space: bool = True
) -> list[int]:
    """Vocabulary ids whose string is `text` (and ` text` with the leading-space variant)."""
    variants = {text}
    if ignore_space:
        variants |= {text.strip(), " " + text.strip()}
    rows = store.query(
        "SELECT token_id FROM vocab WHERE model_sha256 = ? AND token IN (SELECT unnest(?)) "
        "ORDER BY token_id",
        [model_sha256, sorted(variants)],
    )
    return [r["token_id"] for r in rows]


def search_token(
    store: ResultsStore, sae_id: str, token_ids: list[int], limit: int = 100
) -> list[dict]:
    """Latents that fire on any of these tokens in their stored examples, strongest first:
    `feature`, `max_on_token`, `hits`."""
    return store.query(
        "SELECT feature, max(a) AS max_on_token, count(*) AS hits FROM ("
        " SELECT feature, unnest(tokens) AS t, unnest(acts) AS a FROM feature_examples"
        " WHERE sae_id = ?) WHERE t IN (SELECT unnest(?)) AND a > 0 "
        "GROUP BY feature ORDER BY max_on_token DESC, feature LIMIT ?",
        [sae_id, list(token_ids), int(limit)],
    )


def search_ranges(
    store: ResultsStore,
    sae_id: str,
    log10_density: tuple[float, float],
    score: tuple[float, float] | None = None,
    scorer: str | None = None,
    limit: int = 200,
) -> list[dict]:
    """Live latents with log10 density in a range and, optionally, a score of `scorer` in a
    range: `feature`, `density`, `log10_density`, `max_act`, `scorer`, `score`, `explanation`."""
    params: list[Any] = [scorer or "", sae_id, float(log10_density[0]), float(log10_density[1])]
    query = (
        "SELECT f.feature, f.density, f.log10_density, f.max_act, s.scorer, s.value AS score, "
        "e.explanation FROM features f "
        "LEFT JOIN scores s ON s.sae_id = f.sae_id AND s.feature = f.feature AND s.scorer = ? "
        "LEFT JOIN explanations e ON e.sae_id = f.sae_id AND e.feature = f.feature "
        "AND e.explainer = s.explainer "
        "WHERE f.sae_id = ? AND NOT f.dead AND f.log10_density BETWEEN ? AND ? "
    )
    if score is not None and scorer:
        query += "AND s.value BETWEEN ? AND ? "
        params += [float(score[0]), float(score[1])]
    query += "ORDER BY f.log10_density DESC, f.feature LIMIT ?"
    params.append(int(limit))
    return store.query(query, params)
