"""Reads for the web app: each function returns exactly what one panel shows.

Every query is parameterised and bounded (one SAE, one feature, a LIMIT); the app calls these on
a read-only connection. Tables that other issues add (circuits, steering) may be absent from a
file: `has_table` lets callers show an empty state instead of failing.
"""

from __future__ import annotations

from typing import Any

from resultstore.schema import dicts

# Which eval's value a metric shows when several evals report it (the same rule `saelab
# compare` uses: core and loss evals win).
_PREFERRED_EVALS = ("core", "loss")


def schema_version(con) -> int:
    row = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def has_table(con, name: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchone()[0]
    )


def table_columns(con, name: str) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position",
        [name],
    ).fetchall()
    return [r[0] for r in rows]


# -- SAEs ------------------------------------------------------------------------------------


def sae_list(con) -> list[dict]:
    """Identity columns of every SAE (for pickers), ordered by name."""
    return dicts(
        con.execute(
            "SELECT sae_id, name, architecture, d_in, d_sae, hook, model, model_sha256, path "
            "FROM saes ORDER BY name, sae_id"
        )
    )


def sae_row(con, sae_id: str) -> dict | None:
    rows = dicts(con.execute("SELECT * FROM saes WHERE sae_id = ?", [sae_id]))
    return rows[0] if rows else None


def sae_overview(con) -> list[dict]:
    """One row per SAE: identity, every metric (core/loss win ties) and feature-table counts."""
    saes = {r["sae_id"]: r for r in sae_list(con)}
    for sae_id, eval_name, metric, value in con.execute(
        "SELECT sae_id, eval, metric, value FROM metrics ORDER BY sae_id, metric"
    ).fetchall():
        row = saes.get(sae_id)
        if row is None:
            continue
        if metric not in row or eval_name in _PREFERRED_EVALS:
            row[metric] = value
    for sae_id, n, dead, dense, rare in con.execute(
        "SELECT sae_id, count(*), count(*) FILTER (WHERE dead), count(*) FILTER (WHERE dense), "
        "count(*) FILTER (WHERE too_few_examples AND NOT dead) FROM features GROUP BY sae_id"
    ).fetchall():
        if sae_id in saes:
            saes[sae_id].update(
                features_stored=n, dead_latents=dead, dense_latents=dense, rare_latents=rare
            )
    for sae_id, n in con.execute(
        "SELECT sae_id, count(DISTINCT feature) FROM explanations WHERE status = 'ok' "
        "GROUP BY sae_id"
    ).fetchall():
        if sae_id in saes:
            saes[sae_id]["explained"] = n
    return list(saes.values())


def metrics_long(con, sae_ids: list[str]) -> list[dict]:
    """Every (eval, metric, value) of these SAEs."""
    return dicts(
        con.execute(
            "SELECT sae_id, eval, metric, value FROM metrics WHERE sae_id IN (SELECT unnest(?)) "
            "ORDER BY eval, metric",
            [list(sae_ids)],
        )
    )


def score_summary(con, sae_ids: list[str]) -> list[dict]:
    """Mean auto-interp score per (SAE, explainer, scorer) over the latents that scored."""
    return dicts(
        con.execute(
            "SELECT sae_id, explainer, scorer, avg(value) AS mean, count(*) AS n "
            "FROM scores WHERE status = 'ok' AND value IS NOT NULL "
            "AND sae_id IN (SELECT unnest(?)) GROUP BY ALL ORDER BY explainer, scorer",
            [list(sae_ids)],
        )
    )


# -- one feature -----------------------------------------------------------------------------


def feature_stats_row(con, sae_id: str, feature: int) -> dict | None:
    rows = dicts(
        con.execute("SELECT * FROM features WHERE sae_id = ? AND feature = ?", [sae_id, feature])
    )
    return rows[0] if rows else None


def feature_examples(con, sae_id: str, feature: int) -> list[dict]:
    return dicts(
        con.execute(
            "SELECT kind, band, rank, seq, pos, window_start, activation, tokens, acts "
            "FROM feature_examples WHERE sae_id = ? AND feature = ? ORDER BY kind, band, rank",
            [sae_id, feature],
        )
    )


def feature_histograms(con, sae_id: str, feature: int) -> list[dict]:
    return dicts(
        con.execute(
            "SELECT kind, bin_edges, counts FROM feature_histograms "
            "WHERE sae_id = ? AND feature = ?",
            [sae_id, feature],
        )
    )


def feature_logits(con, sae_id: str, feature: int) -> list[dict]:
    """Top and bottom logit effects with their token strings."""
    return dicts(
        con.execute(
            "SELECT l.side, l.rank, l.token_id, l.value, v.token FROM feature_logits l "
            "JOIN saes s ON s.sae_id = l.sae_id "
            "LEFT JOIN vocab v ON v.model_sha256 = s.model_sha256 AND v.token_id = l.token_id "
            "WHERE l.sae_id = ? AND l.feature = ? ORDER BY l.side, l.rank",
            [sae_id, feature],
        )
    )


def feature_explanations(con, sae_id: str, feature: int) -> list[dict]:
    """Each explanation of the latent with its scores (a list of dicts per explanation)."""
    explanations = dicts(
        con.execute(
            "SELECT explainer, status, explanation, n_examples, provenance_json, config_hash, "
            "run_id, created_at FROM explanations WHERE sae_id = ? AND feature = ? "
            "ORDER BY explainer",
            [sae_id, feature],
        )
    )
    scores = dicts(
        con.execute(
            "SELECT explainer, scorer, status, value, ci_low, ci_high, n_windows, n_valid, "
            "n_failures, n_positive, n_negative FROM scores WHERE sae_id = ? AND feature = ? "
            "ORDER BY explainer, scorer",
            [sae_id, feature],
        )
    )
    for e in explanations:
        e["scores"] = [s for s in scores if s["explainer"] == e["explainer"]]
    return explanations


def vocab_strings(con, model_sha256: str, token_ids: list[int]) -> dict[int, str]:
    rows = con.execute(
        "SELECT token_id, token FROM vocab WHERE model_sha256 = ? "
        "AND token_id IN (SELECT unnest(?))",
        [model_sha256, sorted(set(int(t) for t in token_ids))],
    ).fetchall()
    return dict(rows)


def density_histogram(con, sae_id: str, bins_per_decade: int = 4) -> list[dict]:
    """Counts of the SAE's live latents per log10-density bin (for placing one latent)."""
    return dicts(
        con.execute(
            "SELECT floor(log10_density * ?) / ? AS lo, count(*) AS n FROM features "
            "WHERE sae_id = ? AND NOT dead GROUP BY lo ORDER BY lo",
            [bins_per_decade, float(bins_per_decade), sae_id],
        )
    )


def explanation_texts(con, sae_id: str, features: list[int]) -> dict[int, str]:
    """One explanation per latent (the first explainer's), for lists of latents."""
    rows = con.execute(
        "SELECT feature, first(explanation ORDER BY explainer) FROM explanations "
        "WHERE sae_id = ? AND status = 'ok' AND feature IN (SELECT unnest(?)) GROUP BY feature",
        [sae_id, [int(f) for f in features]],
    ).fetchall()
    return dict(rows)


def random_feature(con, sae_id: str, seed: int, alive_only: bool = True) -> int | None:
    """A pseudo-random latent (alive ones first), reproducible for a seed."""
    where = "AND NOT dead" if alive_only else ""
    row = con.execute(
        f"SELECT feature FROM features WHERE sae_id = ? {where} "  # `where` is a constant
        "ORDER BY hash(feature + ?) LIMIT 1",
        [sae_id, int(seed)],
    ).fetchone()
    return int(row[0]) if row else None


# -- search ----------------------------------------------------------------------------------


def search_explanations(con, sae_id: str, text: str, limit: int = 100) -> list[dict]:
    """Latents whose explanation contains `text` (case-insensitive, no wildcards)."""
    return dicts(
        con.execute(
            "SELECT e.feature, e.explainer, e.explanation, f.density, "
            "(SELECT max(s.value) FROM scores s WHERE s.sae_id = e.sae_id "
            " AND s.feature = e.feature AND s.explainer = e.explainer) AS best_score "
            "FROM explanations e LEFT JOIN features f USING (sae_id, feature) "
            "WHERE e.sae_id = ? AND contains(lower(e.explanation), lower(?)) "
            "ORDER BY best_score DESC NULLS LAST, e.feature LIMIT ?",
            [sae_id, text, int(limit)],
        )
    )


def token_ids_for(con, model_sha256: str, text: str, ignore_space: bool = True) -> list[int]:
    """Vocabulary ids whose string is `text` (and ` text` with the leading-space variant)."""
    variants = {text}
    if ignore_space:
        variants |= {text.strip(), " " + text.strip()}
    rows = con.execute(
        "SELECT token_id FROM vocab WHERE model_sha256 = ? AND token IN (SELECT unnest(?)) "
        "ORDER BY token_id",
        [model_sha256, sorted(variants)],
    ).fetchall()
    return [r[0] for r in rows]


def search_token(con, sae_id: str, token_ids: list[int], limit: int = 100) -> list[dict]:
    """Latents that fire on any of these tokens in their stored examples, strongest first."""
    return dicts(
        con.execute(
            "SELECT feature, max(a) AS max_on_token, count(*) AS hits FROM ("
            " SELECT feature, unnest(tokens) AS t, unnest(acts) AS a FROM feature_examples"
            " WHERE sae_id = ?) WHERE t IN (SELECT unnest(?)) AND a > 0 "
            "GROUP BY feature ORDER BY max_on_token DESC, feature LIMIT ?",
            [sae_id, list(token_ids), int(limit)],
        )
    )


def search_ranges(
    con,
    sae_id: str,
    log10_density: tuple[float, float],
    score: tuple[float, float] | None = None,
    scorer: str | None = None,
    limit: int = 200,
) -> list[dict]:
    """Latents with log10 density in a range and, optionally, a score of `scorer` in a range."""
    params: list[Any] = [sae_id, float(log10_density[0]), float(log10_density[1])]
    query = (
        "SELECT f.feature, f.density, f.log10_density, f.max_act, s.scorer, s.value AS score, "
        "e.explanation FROM features f "
        "LEFT JOIN scores s ON s.sae_id = f.sae_id AND s.feature = f.feature AND s.scorer = ? "
        "LEFT JOIN explanations e ON e.sae_id = f.sae_id AND e.feature = f.feature "
        "AND e.explainer = s.explainer "
        "WHERE f.sae_id = ? AND NOT f.dead AND f.log10_density BETWEEN ? AND ? "
    )
    params.insert(0, scorer or "")
    if score is not None and scorer:
        query += "AND s.value BETWEEN ? AND ? "
        params += [float(score[0]), float(score[1])]
    query += "ORDER BY f.log10_density DESC, f.feature LIMIT ?"
    params.append(int(limit))
    return dicts(con.execute(query, params))


def scorer_names(con, sae_id: str) -> list[str]:
    rows = con.execute(
        "SELECT DISTINCT scorer FROM scores WHERE sae_id = ? ORDER BY scorer", [sae_id]
    ).fetchall()
    return [r[0] for r in rows]


# -- circuits and steering (tables added by their own issues; may be absent) -----------------


def rows_of(con, table: str, where: dict[str, Any] | None = None, limit: int = 5000) -> list[dict]:
    """All columns of `table` (one of a fixed set) filtered by equality on known columns."""
    if table not in _OPTIONAL_TABLES or not has_table(con, table):
        return []
    columns = set(table_columns(con, table))
    clauses, params = [], []
    for column, value in (where or {}).items():
        if column not in columns:  # only real column names reach the SQL text
            return []
        clauses.append(f'"{column}" = ?')
        params.append(value)
    query = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    return dicts(con.execute(query + " LIMIT ?", [*params, int(limit)]))


_OPTIONAL_TABLES = {
    "circuits",
    "circuit_nodes",
    "circuit_edges",
    "circuit_curves",
    "steering_runs",
    "steering_samples",
}
