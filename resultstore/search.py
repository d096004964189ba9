"""Searches over latents: by explanation text, by a token that activates them, by density and
score ranges (the app's Search page), in one SAE, a list of SAEs or every SAE of the file
(`sae_id` None). Every row names its SAE (`sae_id`, `name`); every query is bounded by a
LIMIT."""

from __future__ import annotations

from typing import Any

from saelab.resultstore.store import ResultsStore

SAEs = str | list[str] | None
"""One SAE id, a list of them, or None for every SAE of the file."""


def _which(column: str, sae_id: SAEs) -> tuple[str, list]:
    """A WHERE condition on `column` (SQL text fixed here, ids as parameters) and its
    parameters."""
    if sae_id is None:
        return "TRUE", []
    if isinstance(sae_id, str):
        return f"{column} = ?", [sae_id]
    return f"{column} IN (SELECT unnest(?))", [list(sae_id)]


def search_explanations(
    store: ResultsStore, sae_id: SAEs, text: str, limit: int = 100
) -> list[dict]:
    """Latents whose explanation contains `text` (case-insensitive, no wildcards): `sae_id`,
    `name`, `feature`, `explainer`, `explanation`, `density`, `best_score`."""
    where, params = _which("e.sae_id", sae_id)
    return store.query(
        "SELECT e.sae_id, n.name, e.feature, e.explainer, e.explanation, f.density, "
        "(SELECT max(s.value) FROM scores s WHERE s.sae_id = e.sae_id "
        " AND s.feature = e.feature AND s.explainer = e.explainer) AS best_score "
        "FROM explanations e LEFT JOIN features f USING (sae_id, feature) "
        "JOIN saes n ON n.sae_id = e.sae_id "
        f"WHERE {where} AND contains(lower(e.explanation), lower(?)) "
        "ORDER BY best_score DESC NULLS LAST, n.name, e.feature LIMIT ?",
        [*params, text, int(limit)],
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
    store: ResultsStore, sae_id: SAEs, token_ids: list[int], limit: int = 100
) -> list[dict]:
    """Latents that fire on any of these tokens in their stored examples, strongest first:
    `sae_id`, `name`, `feature`, `max_on_token`, `hits`. Token ids are a model's: give SAEs
    of one model (`token_ids_for` its `model_sha256`)."""
    where, params = _which("sae_id", sae_id)
    return store.query(
        "SELECT x.sae_id, n.name, x.feature, max(a) AS max_on_token, count(*) AS hits FROM ("
        " SELECT sae_id, feature, unnest(tokens) AS t, unnest(acts) AS a FROM feature_examples"
        f" WHERE {where}) x JOIN saes n ON n.sae_id = x.sae_id "
        "WHERE t IN (SELECT unnest(?)) AND a > 0 "
        "GROUP BY x.sae_id, n.name, x.feature ORDER BY max_on_token DESC, n.name, x.feature "
        "LIMIT ?",
        [*params, list(token_ids), int(limit)],
    )


def search_ranges(
    store: ResultsStore,
    sae_id: SAEs,
    log10_density: tuple[float, float],
    score: tuple[float, float] | None = None,
    scorer: str | None = None,
    limit: int = 200,
) -> list[dict]:
    """Live latents with log10 density in a range and, optionally, a score of `scorer` in a
    range: `sae_id`, `name`, `feature`, `density`, `log10_density`, `max_act`, `scorer`,
    `score`, `explanation`."""
    where, which = _which("f.sae_id", sae_id)
    params: list[Any] = [scorer or "", *which, float(log10_density[0]), float(log10_density[1])]
    query = (
        "SELECT f.sae_id, n.name, f.feature, f.density, f.log10_density, f.max_act, s.scorer, "
        "s.value AS score, e.explanation FROM features f JOIN saes n ON n.sae_id = f.sae_id "
        "LEFT JOIN scores s ON s.sae_id = f.sae_id AND s.feature = f.feature AND s.scorer = ? "
        "LEFT JOIN explanations e ON e.sae_id = f.sae_id AND e.feature = f.feature "
        "AND e.explainer = s.explainer "
        f"WHERE {where} AND NOT f.dead AND f.log10_density BETWEEN ? AND ? "
    )
    if score is not None and scorer:
        query += "AND s.value BETWEEN ? AND ? "
        params += [float(score[0]), float(score[1])]
    query += "ORDER BY f.log10_density DESC, n.name, f.feature LIMIT ?"
    params.append(int(limit))
    return store.query(query, params)
