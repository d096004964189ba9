"""Compare: the variant frontiers of the chosen SAEs (the plots `saelab compare --html`
writes) and every eval's metrics across them, the winner per metric marked, each metric named
in full with its definition."""

from __future__ import annotations

import streamlit as st

from saelab.app import common

TITLE = "Compare"
ICON = ":material/compare:"


def better_of(column: str) -> str | None:
    """Which way is better for a column "eval / metric" (the eval registry's catalogue)."""
    from saelab.evaluation.registry import direction

    eval_name, _, metric = column.partition(" / ")
    if metric.startswith("autointerp:"):
        return "higher"
    return direction(metric, eval_name)


def winners(table: dict[str, dict[str, float]]) -> dict[str, set[str]]:
    """Per column, the SAE ids holding the best value (ties share the mark)."""
    out: dict[str, set[str]] = {}
    for column, values in table.items():
        direction = better_of(column)
        have = {k: v for k, v in values.items() if v is not None}
        if direction not in ("higher", "lower") or len(have) < 2:
            continue
        best = max(have.values()) if direction == "higher" else min(have.values())
        out[column] = {k for k, v in have.items() if v == best}
    return out


def _linked(saes) -> list[str]:
    """The SAEs the `saes` query parameter names (comma-separated names or ids; an unknown one
    gets a notice), else the first eight."""
    asked = [a for a in (st.query_params.get("saes") or "").split(",") if a]
    by_key = {key: s.sae_id for s in saes for key in (s.name, s.sae_id)}
    unknown = [a for a in asked if a not in by_key]
    if unknown:
        common.bad_param("saes", ",".join(unknown), "names no SAE of this results file", "the rest")
    chosen = list(dict.fromkeys(by_key[a] for a in asked if a in by_key))
    return chosen or [s.sae_id for s in saes[:8]]


def render() -> None:

    st.title("Compare SAEs")
    saes = common.q("list_saes")
    if not saes:
        st.info("This results file holds no SAE yet.")
        return
    names = {s.sae_id: s.name for s in saes}
    chosen = st.multiselect(
        "SAEs", list(names), default=_linked(saes), format_func=names.get, key="compare_pick"
    )
    st.query_params["saes"] = ",".join(names[i] for i in chosen)  # the view as a link
    if not chosen:
        st.caption("Choose SAEs to compare.")
        return
    table: dict[str, dict[str, float]] = {}
    for r in common.q("metrics_long", list(chosen)):
        if r["metric"].startswith("log10_density_hist_"):
            continue
        table.setdefault(f"{r['eval']} / {r['metric']}", {})[r["sae_id"]] = r["value"]
    for r in common.q("score_summary", list(chosen)):
        column = f"autointerp / autointerp:{r['explainer']}:{r['scorer']}"
        table.setdefault(column, {})[r["sae_id"]] = r["mean"]
    _frontiers(chosen)
    marks = winners(table)
    frame = metric_frame(table, marks, chosen, names)
    st.subheader("Every metric")
    st.caption(
        "★ marks the best value per metric where the catalogue says which way is better; "
        "hover a metric's definition to read it whole."
    )
    st.dataframe(
        frame,
        height=min(35 * (len(frame) + 1) + 3, 1200),
        hide_index=True,
        key="compare_table",
        column_config={
            "eval": st.column_config.TextColumn(width="small", pinned=True),
            "metric": st.column_config.TextColumn(width="medium", pinned=True),
            "definition": st.column_config.TextColumn(width="large"),
        },
    )


def metric_frame(table: dict[str, dict[str, float]], marks: dict[str, set[str]], chosen: list,
                 names: dict[str, str]):  # fmt: skip
    """One row per "eval / metric" (the index): `eval`, `metric`, one column per SAE (its
    value, ★ for the best), `better` (which way) and the metric's `definition`."""
    import pandas as pd

    from saelab.evaluation.registry import describe

    rows = []
    for column, values in table.items():
        eval_name, _, metric = column.partition(" / ")
        row = {"eval": eval_name, "metric": metric}
        row |= {names[s]: _cell(values.get(s), s in marks.get(column, ())) for s in chosen}
        row["better"] = better_of(column) or ""
        row["definition"] = describe(eval_name, metric) or ""
        rows.append(row)
    return pd.DataFrame(rows, index=list(table))


def _frontiers(chosen: list[str]) -> None:
    """The frontier plots of `saelab compare --html`, over the chosen evaluated SAEs."""
    from saelab.evaluation.compare import frontier_figure

    rows = [r for r in common.q("sae_overview") if r["sae_id"] in chosen and r["evals"]]
    if not rows:
        st.caption("No frontier plot: none of the chosen SAEs has been evaluated.")
        return
    fig = frontier_figure(rows)
    fig.layout.width = None
    fig.update_layout(title=None, margin={"t": 40})
    st.plotly_chart(fig, key="compare_frontiers")


def _cell(value, best: bool) -> str:
    text = common.fmt(value)
    return f"★ {text}" if best else text
