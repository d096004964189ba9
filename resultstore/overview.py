"""The one overview of every SAE in a results file: identity, every metric, and counts of its
latents and explanations. `saelab compare`, the app's SAEs page and `saelab.Results.metrics()`
all read it here."""

from __future__ import annotations

from saelab.resultstore.saes import list_saes
from saelab.resultstore.store import ResultsStore

PREFERRED_EVALS = ("core", "loss")
"""Where two evals report a metric of the same name, the one these report wins."""
IDENTITY = ("sae_id", "name", "architecture", "d_in", "d_sae", "hook", "model", "path")


def sae_overview(store: ResultsStore) -> list[dict]:
    """One dict per SAE, in `list_saes` order: the identity columns, `evals` (the evals run on
    it), every metric by name (core and loss win ties), and `features_stored`, `dead_latents`,
    `dense_latents`, `rare_latents` (fired too rarely for examples, not dead), `explained`
    (latents with an explanation).

    `dead_fraction` is one definition everywhere: the share of latents that never fired over
    the most tokens any eval counted them on (the features eval's, tens of thousands of
    tokens, when it ran; the core eval's held-out split otherwise), and `dead_fraction_tokens`
    says how many tokens that was. The core eval's own figure stays as `core_dead_fraction`."""
    with store.session():
        rows = {
            s.sae_id: {**{c: getattr(s, c) for c in IDENTITY}, "evals": []}
            for s in list_saes(store)
        }
        metrics = store.query(
            "SELECT sae_id, eval, metric, value FROM metrics ORDER BY sae_id, metric, eval"
        )
        counts = store.query(
            "SELECT sae_id, count(*) AS features_stored, count(*) FILTER (WHERE dead) AS "
            "dead_latents, count(*) FILTER (WHERE dense) AS dense_latents, count(*) FILTER "
            "(WHERE too_few_examples AND NOT dead) AS rare_latents FROM features GROUP BY sae_id"
        )
        tokens = store.query(
            "SELECT sae_id, eval, max(n_tokens) AS n_tokens FROM eval_runs "
            "WHERE eval IN ('core', 'features') GROUP BY sae_id, eval"
        )
        explained = store.query(
            "SELECT sae_id, count(DISTINCT feature) AS explained FROM explanations "
            "WHERE status = 'ok' GROUP BY sae_id"
        )
    for m in metrics:
        row = rows.get(m["sae_id"])
        if row is None:
            continue
        if m["eval"] not in row["evals"]:
            row["evals"].append(m["eval"])
        if m["metric"] not in row or m["eval"] in PREFERRED_EVALS:
            row[m["metric"]] = m["value"]
    for extra in (*counts, *explained):
        row = rows.get(extra.pop("sae_id"))
        if row is not None:
            row.update(extra)
    counted = {(t["sae_id"], t["eval"]): t["n_tokens"] for t in tokens}
    for sae_id, row in rows.items():
        _one_dead_fraction(row, counted.get((sae_id, "core")), counted.get((sae_id, "features")))
    return list(rows.values())


def _one_dead_fraction(row: dict, core_tokens: int | None, features_tokens: int | None) -> None:
    core = row.get("dead_fraction")
    if core is not None:
        row["core_dead_fraction"] = core
    if row.get("features_dead_fraction") is not None:
        row["dead_fraction"] = row["features_dead_fraction"]
        row["dead_fraction_tokens"] = features_tokens
    elif core is not None:
        row["dead_fraction_tokens"] = core_tokens
