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
    (latents with an explanation)."""
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
    return list(rows.values())
