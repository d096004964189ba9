"""Compare: the variant frontiers of the chosen SAEs (the plots `saelab compare --html`
writes), the spread of every metric stored with a 95% interval (error bars), and every eval's
metrics across them ("value ± half-width" where an interval is stored), the winner per metric
marked, each metric named in full with its definition."""

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
    spread: dict[str, dict[str, tuple[float, float]]] = {}
    for r in common.q("metrics_long", list(chosen)):
        if r["metric"].startswith("log10_density_hist_"):
            continue
        column = f"{r['eval']} / {r['metric']}"
        table.setdefault(column, {})[r["sae_id"]] = r["value"]
        if r.get("ci_low") is not None and r.get("ci_high") is not None:
            spread.setdefault(column, {})[r["sae_id"]] = (r["ci_low"], r["ci_high"])
    for r in common.q("score_summary", list(chosen)):
        column = f"autointerp / autointerp:{r['explainer']}:{r['scorer']}"
        table.setdefault(column, {})[r["sae_id"]] = r["mean"]
    _frontiers(chosen)
    _spreads(table, spread, chosen, names)
    marks = winners(table)
    frame = metric_frame(table, marks, chosen, names, spread)
    st.subheader("Every metric")
    st.caption(
        "★ marks the best value per metric where the catalogue says which way is better; "
        "± is half the 95% interval where the eval stores one ([low, high] where it is "
        "lopsided): a ★ whose interval overlaps another SAE's is no clear win. Hover a "
        "metric's definition to read it whole."
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
                 names: dict[str, str],
                 spread: dict[str, dict[str, tuple[float, float]]] | None = None):  # fmt: skip
    """One row per "eval / metric" (the index): `eval`, `metric`, one column per SAE (its
    value with its 95% interval from `spread` where there is one, ★ for the best), `better`
    (which way) and the metric's `definition`."""
    import pandas as pd

    from saelab.evaluation.registry import describe

    rows = []
    for column, values in table.items():
        eval_name, _, metric = column.partition(" / ")
        row = {"eval": eval_name, "metric": metric}
        bounds = (spread or {}).get(column, {})
        row |= {
            names[s]: _cell(values.get(s), s in marks.get(column, ()), bounds.get(s))
            for s in chosen
        }
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


def _spreads(
    table: dict[str, dict[str, float]],
    spread: dict[str, dict[str, tuple[float, float]]],
    chosen: list[str],
    names: dict[str, str],
) -> None:
    """Each metric stored with a 95% interval, across the chosen SAEs, with error bars."""
    if not spread:
        return
    st.subheader("Spread")
    st.caption(
        "Metrics stored with a 95% interval (each eval says over what: probe seeds, data "
        "splits or a bootstrap); SAEs whose bars overlap are not told apart by that metric."
    )
    shown = st.multiselect(
        "Metrics with an interval", sorted(spread), default=default_spreads(spread),
        key="compare_spread_pick",
    )  # fmt: skip
    if not shown:
        return
    fig = spread_figure(table, {c: spread[c] for c in shown}, chosen, names)
    fig.layout.width = None
    st.plotly_chart(fig, key="compare_spreads")


HEADLINES = (
    "scr / scr_metric_threshold_20",
    "tpp / tpp_threshold_20_total_metric",
    "ravel / ravel_disentangle",
    "unlearning / unlearning_score",
    "unlearning / unlearning_substitute_score",
    "stability / shared_fraction",
)
"""The metric each interval-bearing eval is usually read by (SAEBench's headline figures at
n = 20 for SCR and TPP): the Spread panels open on these."""


def default_spreads(spread: dict, n: int = 6) -> list[str]:
    """The Spread panels shown first: the headline metrics that are stored, then the others
    in name order, `n` in all."""
    first = [m for m in HEADLINES if m in spread]
    return (first + [m for m in sorted(spread) if m not in first])[:n]


def spread_figure(
    table: dict[str, dict[str, float]],
    spread: dict[str, dict[str, tuple[float, float]]],
    chosen: list[str],
    names: dict[str, str],
    columns: int = 3,
):
    """One panel per metric with an interval: each SAE's value and its 95% interval as an
    asymmetric error bar (plotly)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = sorted(spread)
    rows = -(-len(metrics) // columns)
    fig = make_subplots(
        rows=rows, cols=min(columns, len(metrics)), subplot_titles=metrics,
        vertical_spacing=min(0.3, 0.9 / rows),
    )  # fmt: skip
    for i, column in enumerate(metrics):
        have = [s for s in chosen if table[column].get(s) is not None]
        values = [table[column][s] for s in have]
        bounds = [spread[column].get(s, (v, v)) for s, v in zip(have, values, strict=True)]
        fig.add_trace(
            go.Scatter(
                x=[names[s] for s in have],
                y=values,
                mode="markers",
                marker={"size": 9, "color": "#1f77b4"},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [hi - v for v, (_, hi) in zip(values, bounds, strict=True)],
                    "arrayminus": [v - lo for v, (lo, _) in zip(values, bounds, strict=True)],
                },
                customdata=bounds,
                hovertemplate="%{x}<br>%{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
                "<extra></extra>",
                showlegend=False,
            ),
            row=i // columns + 1,
            col=i % columns + 1,
        )
    fig.update_layout(height=320 * rows, margin={"t": 60})
    fig.update_xaxes(tickangle=-30)  # SAE names of neighbouring panels would run together
    return fig


def _cell(value, best: bool, interval: tuple[float, float] | None = None) -> str:
    text = common.fmt(value)
    if interval is not None and value is not None:
        text += _interval_text(float(value), *map(float, interval))
    return f"★ {text}" if best else text


def _interval_text(value: float, low: float, high: float) -> str:
    """ " ± half-width" (2 significant digits) for an interval about centred on the value (its
    two arms within 25% of each other), else " [low, high]" (3 significant digits)."""
    half = (high - low) / 2
    if abs((value - low) - (high - value)) <= 0.25 * half + 1e-12:
        return f" ± {half:.2g}"
    return f" [{low:.3g}, {high:.3g}]"
